//! Where the master key comes from: a file, an environment variable or a
//! command. Each yields key text (see [`MasterKey::parse`]).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, geteuid};
use zeroize::Zeroizing;

use crate::envelope::Keyring;
use crate::error::KeyError;
use crate::key::{MasterKey, fill_random, parse_text};

/// How long a key command may run when the configuration names no limit.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The most key text read from a file or a command's output, in bytes.
const MAX_KEY_TEXT: usize = 4096;

/// The most of a failed command's standard error kept for the message.
const MAX_STDERR: usize = 2048;

/// Where to read the master key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file readable by its owner only (mode 0600 or 0400), owned by the
    /// user running this process, and not a symbolic link.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A program run without a shell, with stdin closed; the key is its
    /// standard output. A non-zero exit is an error; past `timeout` the
    /// program and its process group are killed.
    Command {
        /// The program, looked up in `PATH` if it has no slash.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// How long it may run.
        timeout: Duration,
    },
}

impl KeySource {
    /// Reads and parses the master key.
    pub fn load(&self) -> Result<MasterKey, KeyError> {
        match self {
            KeySource::File(path) => load_key_file(path),
            KeySource::Env(name) => load_key_env(name),
            KeySource::Command { program, args, timeout } => load_key_command(program, args, *timeout),
        }
    }

    /// Reads a keyring: one key per line, the current one first, then
    /// older ones still accepted for opening (what a source gives while a
    /// rotation runs). A single key is a keyring of one.
    pub fn load_keyring(&self) -> Result<Keyring, KeyError> {
        let (text, origin) = match self {
            KeySource::File(path) => (read_key_file(path)?, format!("file {}", path.display())),
            KeySource::Env(name) => (read_key_env(name)?, format!("environment variable {name}")),
            KeySource::Command { program, args, timeout } => (
                run_command(program, args, *timeout)
                    .map_err(|problem| KeyError::Command { program: program.clone(), problem })?,
                format!("command {program}"),
            ),
        };
        parse_keyring_bytes(&text).map_err(|reason| KeyError::Invalid { origin, reason })
    }
}

/// Parses keyring text: keys one per line, blank lines ignored, the first
/// the current key.
pub fn parse_keyring(text: &str) -> Result<Keyring, &'static str> {
    let mut keys = text.lines().filter(|l| !l.trim().is_empty()).map(parse_text);
    let current = keys.next().ok_or("it is empty")??;
    let mut ring = Keyring::new(current);
    for key in keys {
        ring = ring.with_previous(key?);
    }
    Ok(ring)
}

fn parse_keyring_bytes(bytes: &[u8]) -> Result<Keyring, &'static str> {
    parse_keyring(std::str::from_utf8(bytes).map_err(|_| "it is not text")?)
}

/// Replaces the key file at `path` with `keys` (the current one first),
/// atomically: a reader sees the old file or the new one, never a part.
/// The file keeps mode 0600; the path must not be a symbolic link.
pub fn write_keyring_file(path: &Path, keys: &[&MasterKey]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.into(), source };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(KeyError::Symlink(path.into())),
        _ => {}
    }
    let temp = temp_path(path).map_err(io)?;
    let mut text = Zeroizing::new(String::new());
    for key in keys {
        text.push_str(&key.to_base64());
        text.push('\n');
    }
    let written = write_new_text(&temp, text.as_bytes()).and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map_err(io)?;
    sync_dir(path).map_err(io)
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let file_name = path.file_name().ok_or_else(|| io::Error::other("the path names no file"))?;
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix);
    let mut temp_name = OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", hex::encode(suffix)));
    Ok(parent_dir(path).join(temp_name))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(parent_dir(path)).and_then(|d| d.sync_all())
}

/// Names the source for messages, e.g. `file /etc/bastion/master.key`.
/// A command's arguments are left out.
impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Env(name) => write!(f, "environment variable {name}"),
            KeySource::Command { program, .. } => write!(f, "command {program}"),
        }
    }
}

/// Reads the master key from a file, refusing a symbolic link, a file that
/// grants its group or other users any access, and a file owned by another
/// user than the effective uid.
pub fn load_key_file(path: &Path) -> Result<MasterKey, KeyError> {
    let text = read_key_file(path)?;
    parse_bytes(&text).map_err(|reason| KeyError::Invalid { origin: format!("file {}", path.display()), reason })
}

/// The checked contents of a key file (see [`load_key_file`]).
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io { path: path.into(), source };
    if fs::symlink_metadata(path).map_err(io)?.file_type().is_symlink() {
        return Err(KeyError::Symlink(path.into()));
    }
    // O_NOFOLLOW closes the race with a symlink swapped in after the check;
    // O_NONBLOCK keeps a FIFO from blocking the open. Every other check is
    // made on the opened file.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == Errno::ELOOP as i32 => KeyError::Symlink(path.into()),
            _ => io(e),
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile(path.into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions { path: path.into(), mode });
    }
    let euid = geteuid().as_raw();
    if meta.uid() != euid {
        return Err(KeyError::NotOwned { path: path.into(), owner: meta.uid(), euid });
    }
    let (text, complete) = read_capped(&mut file, MAX_KEY_TEXT).map_err(io)?;
    if !complete {
        return Err(KeyError::Invalid { origin: format!("file {}", path.display()), reason: "the file is too large" });
    }
    Ok(text)
}

/// Reads the master key from an environment variable.
pub fn load_key_env(name: &str) -> Result<MasterKey, KeyError> {
    let text = read_key_env(name)?;
    parse_bytes(&text).map_err(|reason| KeyError::Invalid { origin: format!("environment variable {name}"), reason })
}

fn read_key_env(name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(KeyError::EnvMissing(name.into()));
    }
    let value: OsString = std::env::var_os(name).ok_or_else(|| KeyError::EnvMissing(name.into()))?;
    Ok(Zeroizing::new(value.into_vec()))
}

/// Runs a program (no shell, stdin closed, in its own process group) and
/// reads the master key from its standard output. A non-zero exit is an
/// error carrying the start of its standard error; past `timeout` the
/// process group is killed.
pub fn load_key_command(program: &str, args: &[String], timeout: Duration) -> Result<MasterKey, KeyError> {
    let fail = |problem: String| KeyError::Command { program: program.into(), problem };
    let text = run_command(program, args, timeout).map_err(fail)?;
    parse_bytes(&text).map_err(|reason| KeyError::Invalid { origin: format!("command {program}"), reason })
}

/// Creates a key file holding a new random master key, as base64 and a
/// newline, with mode 0600. An existing file is never overwritten. The file
/// appears complete or not at all: the key is written to a temporary file
/// in the same directory, then linked into place.
pub fn create_key_file(path: &Path) -> Result<MasterKey, KeyError> {
    let io = |source| KeyError::Io { path: path.into(), source };
    let temp = temp_path(path).map_err(io)?;

    let key = MasterKey::generate();
    let written = write_new(&temp, &key).and_then(|()| fs::hard_link(&temp, path));
    let removed = fs::remove_file(&temp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(KeyError::Exists(path.into())),
        Err(e) => return Err(io(e)),
    }
    removed.map_err(io)?;
    // Make the new directory entry durable.
    sync_dir(path).map_err(io)?;
    Ok(key)
}

/// Loads the key file if it exists, else creates it with a new key. The
/// flag is true when the file was created, so the caller can say so.
pub fn load_or_create_key_file(path: &Path) -> Result<(MasterKey, bool), KeyError> {
    match fs::symlink_metadata(path) {
        Ok(_) => return load_key_file(path).map(|key| (key, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(KeyError::Io { path: path.into(), source: e }),
    }
    match create_key_file(path) {
        Ok(key) => Ok((key, true)),
        // Another process created it first: use that one.
        Err(KeyError::Exists(_)) => load_key_file(path).map(|key| (key, false)),
        Err(e) => Err(e),
    }
}

/// Writes `key` to a new file with mode 0600 and syncs it.
fn write_new(path: &Path, key: &MasterKey) -> io::Result<()> {
    let mut text = key.to_base64();
    text.push('\n');
    write_new_text(path, text.as_bytes())
}

/// Writes `text` to a new file with mode 0600 and syncs it.
fn write_new_text(path: &Path, text: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    // The umask may have taken bits away; the mode must be exactly 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(text)?;
    file.sync_all()
}

/// Parses key bytes from a source; the error is a reason that does not
/// quote them.
fn parse_bytes(bytes: &[u8]) -> Result<MasterKey, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text")?;
    parse_text(text)
}

/// Reads at most `cap` bytes into a buffer zeroed on drop. The flag is false
/// when there was more.
fn read_capped(reader: &mut impl Read, cap: usize) -> io::Result<(Zeroizing<Vec<u8>>, bool)> {
    let mut buf = Zeroizing::new(vec![0u8; cap + 1]);
    let mut len = 0;
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len.min(cap));
    Ok((buf, len <= cap))
}

/// Reads everything, keeping the first `cap` bytes.
fn read_head(reader: &mut impl Read, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap - kept.len();
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    kept
}

enum Output {
    Stdout(io::Result<(Zeroizing<Vec<u8>>, bool)>),
    Stderr(Vec<u8>),
}

/// Runs the key command; the error is the problem, for [`KeyError::Command`].
fn run_command(program: &str, args: &[String], timeout: Duration) -> Result<Zeroizing<Vec<u8>>, String> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill(&mut child);
        return Err("its output could not be captured".into());
    };
    let (tx, rx) = mpsc::channel();
    let tx_err = tx.clone();
    // The readers end when the pipes close: at the latest when the process
    // group is killed.
    thread::spawn(move || {
        let _ = tx.send(Output::Stdout(read_capped(&mut stdout, MAX_KEY_TEXT)));
    });
    thread::spawn(move || {
        let _ = tx_err.send(Output::Stderr(read_head(&mut stderr, MAX_STDERR)));
    });

    let timed_out = || format!("it did not finish within {timeout:?} and was killed");
    let (mut out, mut err) = (None, None);
    let (out, err) = loop {
        match (out.take(), err.take()) {
            (Some(o), Some(e)) => break (o, e),
            (o, e) => (out, err) = (o, e),
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Output::Stdout(o)) => out = Some(o),
            Ok(Output::Stderr(e)) => err = Some(e),
            Err(_) => {
                kill(&mut child);
                return Err(timed_out());
            }
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                kill(&mut child);
                return Err(timed_out());
            }
            Err(e) => {
                kill(&mut child);
                return Err(format!("cannot wait for it: {e}"));
            }
        }
    };
    if !status.success() {
        let mut stderr = printable(&err);
        // A script that echoes what it prints (e.g. under `set -x`) must not
        // leak the key through its standard error.
        if let Ok((text, _)) = &out {
            for word in String::from_utf8_lossy(text).split_whitespace().filter(|w| w.len() >= 8) {
                stderr = stderr.replace(word, "[redacted]");
            }
        }
        return Err(if stderr.is_empty() {
            format!("it failed ({status})")
        } else {
            format!("it failed ({status}): {stderr}")
        });
    }
    match out {
        Ok((text, true)) => Ok(text),
        Ok((_, false)) => Err(format!("it printed more than {MAX_KEY_TEXT} bytes")),
        Err(e) => Err(format!("cannot read its output: {e}")),
    }
}

/// Kills the child's process group and reaps the child.
fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Standard error as one line of printable text.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";

    fn key_text() -> String {
        MasterKey::from_bytes(&KEY).to_base64().to_string()
    }

    /// A key file with the given mode in a fresh directory.
    fn key_file(mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        fs::write(&path, format!("{}\n", key_text())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn assert_no_key(text: &str) {
        assert!(!text.contains(&key_text()[..16]), "{text}");
        assert!(!text.contains(&hex::encode(KEY)[..16]), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }

    fn command(program: &str, args: &[&str], timeout: Duration) -> Result<MasterKey, KeyError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        KeySource::Command { program: program.into(), args, timeout }.load()
    }

    #[test]
    fn a_private_file_is_accepted() {
        for mode in [0o600, 0o400] {
            let (_dir, path) = key_file(mode);
            let key = KeySource::File(path.clone()).load().unwrap();
            assert_eq!(key.id(), MasterKey::from_bytes(&KEY).id());
        }
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        for (mode, shown) in [(0o644, "0644"), (0o640, "0640"), (0o604, "0604"), (0o620, "0620")] {
            let (_dir, path) = key_file(mode);
            let err = load_key_file(&path).unwrap_err();
            assert!(matches!(err, KeyError::LoosePermissions { mode: m, .. } if m == mode), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(shown), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
            assert_no_key(&format!("{message} {err:?}"));
        }
    }

    #[test]
    fn a_symlink_is_refused() {
        let (dir, path) = key_file(0o600);
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = load_key_file(&link).unwrap_err();
        assert!(matches!(err, KeyError::Symlink(_)), "{err:?}");
        assert!(err.to_string().contains("link.key"));
    }

    #[test]
    fn a_directory_or_missing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(load_key_file(dir.path()), Err(KeyError::NotAFile(_))));
        let missing = dir.path().join("nope.key");
        let err = load_key_file(&missing).unwrap_err();
        assert!(matches!(&err, KeyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound));
        assert!(err.to_string().contains("nope.key"));
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        // Only root can give a file away; as another user, a file owned by
        // someone else with mode 0600 cannot even be opened.
        if !geteuid().is_root() {
            return;
        }
        let (_dir, path) = key_file(0o600);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = load_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotOwned { owner: 65534, euid: 0, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("uid 65534") && message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let almost = format!("{}xyz", key_text());
        fs::write(&path, &almost).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("master.key"));
        assert_no_key(&format!("{err} {err:?}"));

        fs::write(&path, vec![b'A'; MAX_KEY_TEXT + 1]).unwrap();
        assert!(matches!(load_key_file(&path), Err(KeyError::Invalid { reason: "the file is too large", .. })));
    }

    #[test]
    fn create_key_file_makes_a_private_file_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = create_key_file(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", key.to_base64().as_str()));
        assert_eq!(load_key_file(&path).unwrap().id(), key.id());
        // Nothing left behind but the key file.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let err = create_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Exists(_)), "{err:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        // Nor through a dangling symlink.
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(dir.path().join("target.key"), &link).unwrap();
        assert!(matches!(create_key_file(&link), Err(KeyError::Exists(_))));
        assert!(!dir.path().join("target.key").exists());
    }

    #[test]
    fn load_or_create_reports_creation_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (first, created) = load_or_create_key_file(&path).unwrap();
        assert!(created);
        let (second, created) = load_or_create_key_file(&path).unwrap();
        assert!(!created);
        assert_eq!(first.id(), second.id());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create_key_file(&path), Err(KeyError::LoosePermissions { .. })));
    }

    #[test]
    fn keyrings_are_keys_one_per_line() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let text = format!("\n{}\n  \n{}\n", a.to_base64().as_str(), hex::encode([7u8; 32]));
        let ring = parse_keyring(&text).unwrap();
        assert_eq!(ring.current_id(), a.id());
        assert_eq!(ring.ids().count(), 2);
        assert_eq!(parse_keyring("").unwrap_err(), "it is empty");
        assert!(parse_keyring(&format!("{}\nnot a key\n", a.to_base64().as_str())).is_err());
        // one key, as every source gives it
        assert_eq!(parse_keyring(&format!("{}\n", b.to_base64().as_str())).unwrap().ids().count(), 1);
    }

    #[test]
    fn a_key_file_is_replaced_whole_by_a_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (old, _) = load_or_create_key_file(&path).unwrap();
        let new = MasterKey::generate();
        write_keyring_file(&path, &[&new, &old]).unwrap();
        let ring = KeySource::File(path.clone()).load_keyring().unwrap();
        assert_eq!(ring.current_id(), new.id());
        assert_eq!(ring.ids().nth(1), Some(old.id()));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // the single-key reader refuses a keyring: it is not one key
        assert!(load_key_file(&path).is_err());
        write_keyring_file(&path, &[&new]).unwrap();
        assert_eq!(load_key_file(&path).unwrap().id(), new.id());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(write_keyring_file(&link, &[&new]), Err(KeyError::Symlink(_))));
    }

    const ENV_B64: &str = "BASTION_VAULT_TEST_KEY_B64";
    const ENV_HEX: &str = "BASTION_VAULT_TEST_KEY_HEX";

    /// Setting a variable in this process needs `unsafe`, so the test runs
    /// itself again as a child with the variables set.
    #[test]
    fn env_source_reads_the_variable() {
        if std::env::var_os(ENV_B64).is_some() {
            let expected = MasterKey::from_bytes(&KEY);
            assert_eq!(KeySource::Env(ENV_B64.into()).load().unwrap().id(), expected.id());
            assert_eq!(load_key_env(ENV_HEX).unwrap().id(), expected.id());
            return;
        }
        let name = "source::tests::env_source_reads_the_variable";
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1"])
            .env(ENV_B64, format!("  {}\n", key_text()))
            .env(ENV_HEX, hex::encode(KEY))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn env_source_errors() {
        let missing = "BASTION_VAULT_TEST_KEY_UNSET";
        let err = load_key_env(missing).unwrap_err();
        assert!(matches!(err, KeyError::EnvMissing(_)));
        assert!(err.to_string().contains(missing));
        assert!(matches!(load_key_env(""), Err(KeyError::EnvMissing(_))));
        assert!(matches!(load_key_env("A=B"), Err(KeyError::EnvMissing(_))));
        // PATH is set, and is not a key; the error does not echo it.
        let err = load_key_env("PATH").unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("environment variable PATH"));
        if let Some(path) = std::env::var("PATH").ok().filter(|p| p.len() > 4) {
            assert!(!format!("{err} {err:?}").contains(&path));
        }
    }

    #[test]
    fn command_source_reads_stdout() {
        let script = format!("echo '{}'; echo 'some diagnostics' >&2", key_text());
        let key = command("sh", &["-c", &script], Duration::from_secs(10)).unwrap();
        assert_eq!(key.id(), MasterKey::from_bytes(&KEY).id());
        let key = command("printf", &["%s", &hex::encode(KEY)], Duration::from_secs(10)).unwrap();
        assert_eq!(key.id(), MasterKey::from_bytes(&KEY).id());
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_stderr_but_never_its_stdout() {
        let script = format!("echo '{0}'; echo 'vault is sealed, {0}' >&2; exit 3", key_text());
        let err = command("sh", &["-c", &script], Duration::from_secs(10)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, KeyError::Command { .. }), "{err:?}");
        assert!(message.contains("command sh"), "{message}");
        assert!(message.contains("vault is sealed, [redacted]"), "{message}");
        assert!(message.contains('3'), "{message}");
        assert_no_key(&format!("{message} {err:?}"));

        let err = command("/nonexistent/key-helper", &[], Duration::from_secs(10)).unwrap_err();
        assert!(err.to_string().contains("cannot start it"), "{err}");

        // Success, but not a key: the output is not echoed.
        let err = command("echo", &["0123456789abcdef-not-a-key"], Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err:?}");
        assert_no_key(&format!("{err} {err:?}"));

        let err = command("sh", &["-c", "head -c 5000 /dev/zero | tr '\\0' A"], Duration::from_secs(10)).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // A grandchild keeps the output pipe open; it is killed with its group.
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let err = command("sh", &["-c", &script], Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        // On a machine too busy to start the grandchild in time there is
        // nothing more to check.
        let Ok(pid) = fs::read_to_string(&pid_file).unwrap_or_default().trim().parse::<i32>() else { return };
        // The grandchild is gone, or a zombie waiting for its new parent.
        let stat = Path::new("/proc").join(pid.to_string()).join("stat");
        let gone = (0..500).any(|_| {
            let state = fs::read_to_string(&stat).ok().and_then(|s| s.rsplit(") ").next().map(|r| r.to_string()));
            let done = state.is_none_or(|r| r.starts_with('Z'));
            if !done {
                thread::sleep(Duration::from_millis(10));
            }
            done
        });
        assert!(gone, "process {pid} still runs");
    }

    #[test]
    fn debug_of_sources_and_keys_shows_no_key() {
        let key = MasterKey::from_bytes(&KEY);
        assert_no_key(&format!("{key:?}"));
        let source =
            KeySource::Command { program: "pass".into(), args: vec!["show".into()], timeout: Duration::from_secs(1) };
        assert_eq!(source.to_string(), "command pass");
        assert_eq!(KeySource::Env("K".into()).to_string(), "environment variable K");
    }
}
