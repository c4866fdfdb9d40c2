//! `bastion users` and `bastion admin` through the real binary, beside a
//! running gateway that has the same store open.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, WAIT, bastion_bin, eventually, fixture_bin};

const PASSWORD: &str = "a long enough password";

fn config() -> Value {
    json!({
        "mcpServers": {
            "inside": {"command": fixture_bin(), "args": ["everything", "--stdio"]},
            "outside": {"command": fixture_bin(), "args": ["everything", "--stdio"]}
        },
        "groups": {"dev": ["inside"], "ops": ["outside"], "qa": ["inside", "outside"]},
        "users": {"carol": {"role": "viewer", "groups": ["dev"]}}
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the command and asserts success; returns stdout and stderr.
fn ok(gw: &Gateway, args: &[&str]) -> (String, String) {
    let out = gw.cli(args);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    (stdout(&out), stderr(&out))
}

/// Runs the command and asserts a failure whose message contains `needle`,
/// with nothing on stdout.
fn fails(out: &Output, args: &[&str], needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{args:?} succeeded: {err}");
    assert!(out.stdout.is_empty(), "{args:?} printed on stdout: {}", stdout(out));
    assert!(err.contains(needle), "{args:?}: the message names {needle:?}: {err}");
}

/// The store's users, as `users list --json` shows them.
fn listed(gw: &Gateway) -> Vec<Value> {
    let (out, _) = ok(gw, &["users", "list", "--json"]);
    out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn store_entry(gw: &Gateway, name: &str) -> Option<Value> {
    listed(gw).into_iter().find(|u| u["name"] == name && u["source"] == "store")
}

/// Runs `bastion --config … ARGS` with `input` as its standard input (a
/// pipe), within [`WAIT`].
pub(crate) fn cli_with_input(gw: &Gateway, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(bastion_bin())
        .arg("--config")
        .arg(&gw.config_path)
        .args(args)
        .current_dir(gw.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bastion");
    let mut stdin = child.stdin.take().expect("piped");
    // Written by a thread: a command that exits without reading must not
    // block the test.
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = crate::harness::wait_bounded(child, &format!("{args:?}"), WAIT);
    let _ = writer.join();
    out
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// The RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret at a time.
fn totp_code(secret: &str, unix: u64) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_string()).to_bytes().expect("base32 secret");
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes, None, String::new()).expect("TOTP").generate(unix)
}

/// A code that none of the steps around now has.
fn wrong_code(secret: &str) -> String {
    let t = now_unix();
    let near: Vec<String> = (0..5).map(|i| totp_code(secret, t + i * 30 - 60)).collect();
    (0..6).map(|i| format!("{i:06}")).find(|c| !near.contains(c)).expect("a wrong code")
}

/// `bastion admin totp NAME`: reads the URI and the secret it prints, then
/// answers with `code(secret)` (None: close stdin without a code).
/// Returns the secret, the URI and the command's output.
fn enrol(gw: &Gateway, name: &str, code: impl Fn(&str) -> Option<String>) -> (String, String, Output) {
    let args = ["admin", "totp", name];
    let mut child = Command::new(bastion_bin())
        .arg("--config")
        .arg(&gw.config_path)
        .args(args)
        .current_dir(gw.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bastion admin totp");
    let pid = child.id();
    // Bounds the reads below: the command is killed if it hangs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        })
    };
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let (mut uri, mut secret) = (String::new(), String::new());
    out.read_line(&mut uri).expect("the URI line");
    out.read_line(&mut secret).expect("the secret line");
    let (uri, secret) = (uri.trim().to_string(), secret.trim().to_string());
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(c) = code(&secret) {
        writeln!(stdin, "{c}").expect("write the code");
    }
    drop(stdin);
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).expect("stdout");
    let mut err = Vec::new();
    child.stderr.take().expect("piped").read_to_end(&mut err).expect("stderr");
    let status = child.wait().expect("wait");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.join().expect("killer");
    let mut stdout = format!("{uri}\n{secret}\n").into_bytes();
    stdout.extend(rest);
    (secret, uri, Output { status, stdout, stderr: err })
}

fn admin_entry(gw: &Gateway, name: &str) -> Value {
    let (out, _) = ok(gw, &["admin", "list", "--json"]);
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {out}"))
}

fn verify(gw: &Gateway, name: &str, password: &str, code: &str) -> Output {
    cli_with_input(gw, &["admin", "verify", name], &format!("{password}\n{code}\n"))
}

#[test]
fn users_add_set_list_and_rm() {
    let gw = Gateway::start(config());
    let (out, err) = ok(&gw, &["users", "add", "alice", "--role", "user", "--group", "dev", "--group", "dev"]);
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(err.contains("alice"), "{err}");
    let a = store_entry(&gw, "alice").expect("alice is listed");
    assert_eq!((a["role"].clone(), a["groups"].clone()), (json!("user"), json!(["dev"])), "a repeated group once");
    assert_eq!(a["shadowed"], false);
    assert!(a["updated_at"].is_string(), "{a}");

    // set: role, groups added and removed, groups replaced, groups cleared.
    ok(&gw, &["users", "set", "alice", "--role", "manager"]);
    let a = store_entry(&gw, "alice").expect("alice");
    assert_eq!((a["role"].clone(), a["groups"].clone()), (json!("manager"), json!(["dev"])), "groups kept");
    ok(&gw, &["users", "set", "alice", "--add-group", "ops", "--add-group", "qa"]);
    assert_eq!(store_entry(&gw, "alice").expect("alice")["groups"], json!(["dev", "ops", "qa"]));
    ok(&gw, &["users", "set", "alice", "--remove-group", "dev"]);
    assert_eq!(store_entry(&gw, "alice").expect("alice")["groups"], json!(["ops", "qa"]));
    let (_, err) = ok(&gw, &["users", "set", "alice", "--remove-group", "dev"]);
    assert!(err.contains("not in group"), "a group not held is named: {err}");
    ok(&gw, &["users", "set", "alice", "--groups", "qa,dev", "--role", "viewer"]);
    let a = store_entry(&gw, "alice").expect("alice");
    assert_eq!((a["role"].clone(), a["groups"].clone()), (json!("viewer"), json!(["qa", "dev"])));
    ok(&gw, &["users", "set", "alice", "--groups", ""]);
    assert_eq!(store_entry(&gw, "alice").expect("alice")["groups"], json!([]));

    // A name that begins with '-' is a name, not an option.
    ok(&gw, &["users", "add", "-dash", "--role", "admin"]);
    assert!(store_entry(&gw, "-dash").is_some());

    // The table: one line per user, with its source.
    let (table, _) = ok(&gw, &["users", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("SOURCE"), "{table}");
    let alice = lines.iter().find(|l| l.starts_with("alice ")).unwrap_or_else(|| panic!("alice: {table}"));
    assert!(alice.contains("viewer") && alice.contains("store"), "{alice}");
    let carol = lines.iter().find(|l| l.starts_with("carol ")).unwrap_or_else(|| panic!("carol: {table}"));
    assert!(carol.contains("viewer") && carol.contains("config") && carol.contains("dev"), "{carol}");

    // rm tells how many keys the user still has, and keeps them.
    let _key = gw.create_bare_key("alice", &[]);
    let _key2 = gw.create_bare_key("alice", &[]);
    let (_, err) = ok(&gw, &["users", "rm", "alice"]);
    assert!(err.contains("2 active API keys"), "{err}");
    assert!(store_entry(&gw, "alice").is_none());
    let (keys, _) = ok(&gw, &["keys", "list", "--json", "--user", "alice"]);
    assert_eq!(keys.lines().count(), 2, "the keys are kept: {keys}");
    let (_, err) = ok(&gw, &["users", "rm", "-dash"]);
    assert!(err.contains("no active API keys"), "{err}");
}

#[test]
fn users_errors_are_named_and_exit_non_zero() {
    let gw = Gateway::start(config());
    ok(&gw, &["users", "add", "bob", "--role", "user"]);
    for (args, needle) in [
        (&["users", "add", "eve", "--role", "root"][..], "unknown role \"root\""),
        (&["users", "add", "eve", "--role", "Admin"][..], "unknown role \"Admin\""),
        (&["users", "add", "eve", "--role", "user", "--group", "nope"][..], "unknown group \"nope\""),
        (&["users", "add", " eve", "--role", "user"][..], "invalid user name"),
        (&["users", "add", "", "--role", "user"][..], "invalid user name"),
        (&["users", "add", "bob", "--role", "admin"][..], "already exists"),
        (&["users", "set", "eve", "--role", "user"][..], "no user \"eve\""),
        (&["users", "set", "bob"][..], "nothing to change"),
        (&["users", "set", "bob", "--role", "owner"][..], "unknown role"),
        (&["users", "set", "bob", "--add-group", "nope"][..], "unknown group \"nope\""),
        (&["users", "set", "bob", "--groups", "dev,nope"][..], "unknown group \"nope\""),
        (&["users", "set", "bob", "--groups", "dev", "--add-group", "ops"][..], "cannot be used with"),
        (&["users", "rm", "eve"][..], "no user \"eve\""),
        (&["users", "add", "eve"][..], "--role"),
    ] {
        fails(&gw.cli(args), args, needle);
    }
    // Nothing was changed by the failures.
    let b = store_entry(&gw, "bob").expect("bob");
    assert_eq!((b["role"].clone(), b["groups"].clone()), (json!("user"), json!([])));
    assert!(store_entry(&gw, "eve").is_none());
}

#[test]
fn a_config_entry_wins_over_the_store() {
    let gw = Gateway::start(config());
    let (_, err) = ok(&gw, &["users", "add", "carol", "--role", "admin", "--group", "ops"]);
    assert!(err.contains("warning") && err.contains("config") && err.contains("wins"), "{err}");
    let carols: Vec<Value> = listed(&gw).into_iter().filter(|u| u["name"] == "carol").collect();
    assert_eq!(carols.len(), 2, "{carols:?}");
    assert_eq!(carols[0]["source"], "config", "the entry in force first");
    assert_eq!((carols[0]["role"].clone(), carols[0]["shadowed"].clone()), (json!("viewer"), json!(false)));
    assert_eq!(carols[1]["source"], "store");
    assert_eq!((carols[1]["role"].clone(), carols[1]["shadowed"].clone()), (json!("admin"), json!(true)));
    let (table, _) = ok(&gw, &["users", "list"]);
    assert!(table.lines().any(|l| l.starts_with("carol ") && l.contains("shadowed")), "{table}");

    let (_, err) = ok(&gw, &["users", "set", "carol", "--role", "user"]);
    assert!(err.contains("warning") && err.contains("wins"), "{err}");
    let (_, err) = ok(&gw, &["users", "rm", "carol"]);
    assert!(err.contains("stays in the config"), "{err}");
    fails(&gw.cli(&["users", "set", "carol", "--role", "user"]), &["users", "set", "carol"], "config file");
    fails(&gw.cli(&["users", "rm", "carol"]), &["users", "rm", "carol"], "config file");
    let (_, err) = ok(&gw, &["users", "add", "dave", "--role", "user"]);
    assert!(!err.contains("warning"), "no warning for a name the config does not hold: {err}");
}

/// A store user's access follows the store: given by `users add`, taken by
/// `users rm` (its keys stay, but give no access).
#[tokio::test]
async fn a_removed_store_user_loses_access() {
    let gw = Gateway::start(config());
    ok(&gw, &["users", "add", "erin", "--role", "user", "--group", "dev"]);
    let key = gw.create_bare_key("erin", &[]);
    let mcp = Mcp::stateless(gw.url("/mcp"), &key);
    let call = || async {
        let reply = mcp.request("tools/call", json!({"name": "inside__test_simple_text", "arguments": {}})).await;
        reply.status == 200 && reply.rpc().get("result").is_some()
    };
    assert!(call().await, "a store user with the group calls its server");
    ok(&gw, &["users", "rm", "erin"]);
    eventually(Duration::from_secs(10), "the removal to apply", || async { (!call().await).then_some(()) }).await;
}

#[test]
fn admin_add_enrol_and_verify() {
    let gw = Gateway::start(config());
    // The password comes from a pipe, one line; short ones are refused.
    let out = cli_with_input(&gw, &["admin", "add", "root"], "too short\n");
    fails(&out, &["admin", "add"], "at least 12 characters");
    assert!(!stderr(&out).contains("too short"), "the password is not repeated");
    let out = cli_with_input(&gw, &["admin", "add", "root"], "");
    fails(&out, &["admin", "add"], "no password on standard input");
    let out = cli_with_input(&gw, &["admin", "add", "root"], &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "admin add: {}", stderr(&out));
    assert!(out.stdout.is_empty() && !stderr(&out).contains(PASSWORD), "{}", stderr(&out));
    let a = admin_entry(&gw, "root");
    assert_eq!((a["totp"].clone(), a["failed_attempts"].clone()), (json!("none"), json!(0)), "{a}");
    let out = cli_with_input(&gw, &["admin", "add", "root"], &format!("{PASSWORD}\n"));
    fails(&out, &["admin", "add", "root"], "already exists");

    // No login before the second factor is enrolled.
    let out = verify(&gw, "root", PASSWORD, "123456");
    fails(&out, &["admin", "verify"], "second factor");

    // Enrolment with a wrong code changes nothing.
    let (_, _, out) = enrol(&gw, "root", |s| Some(wrong_code(s)));
    assert!(!out.status.success(), "a wrong code confirms nothing: {}", stderr(&out));
    assert!(stderr(&out).contains("not changed"), "{}", stderr(&out));
    assert_eq!(admin_entry(&gw, "root")["totp"], "none");
    let (_, _, out) = enrol(&gw, "root", |_| None);
    assert!(!out.status.success() && stderr(&out).contains("no code"), "{}", stderr(&out));

    // Enrolment with a current code.
    let (secret, uri, out) = enrol(&gw, "root", |s| Some(totp_code(s, now_unix())));
    assert!(out.status.success(), "admin totp: {}", stderr(&out));
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "{secret}"
    );
    assert!(uri.starts_with(&format!("otpauth://totp/Bastion:root?secret={secret}")), "{uri}");
    assert!(uri.contains("issuer=Bastion"), "{uri}");
    assert_eq!(stdout(&out).lines().count(), 2, "the URI and the secret only: {}", stdout(&out));
    assert!(!stderr(&out).contains(&secret), "the secret is not on stderr");
    let listing = ok(&gw, &["admin", "list", "--json"]).0 + &ok(&gw, &["admin", "list"]).0;
    assert!(!listing.contains(&secret) && !listing.contains("argon2"), "{listing}");
    assert_eq!(admin_entry(&gw, "root")["totp"], "confirmed");

    // The code used to confirm is spent; the next step's code logs in, once.
    let next = totp_code(&secret, now_unix() + 30);
    let out = verify(&gw, "root", PASSWORD, &next);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    assert!(!stderr(&out).contains(PASSWORD) && !stderr(&out).contains(&next));
    assert!(admin_entry(&gw, "root")["last_login_at"].is_string());
    fails(&verify(&gw, "root", PASSWORD, &next), &["admin", "verify", "replay"], "already used");
    fails(&verify(&gw, "root", "the wrong password", &next), &["admin", "verify"], "password is wrong");
    fails(&verify(&gw, "root", PASSWORD, &wrong_code(&secret)), &["admin", "verify"], "code is wrong");
    fails(&verify(&gw, "nobody", PASSWORD, &next), &["admin", "verify"], "no such administrator");
    assert_eq!(admin_entry(&gw, "root")["failed_attempts"], 3);

    // The password is stored hashed only.
    for entry in std::fs::read_dir(gw.dir().join("data")).expect("data dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            !bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
            "{} holds the password",
            path.display()
        );
    }

    // A new password replaces the old one.
    let new = "another long password";
    let out = cli_with_input(&gw, &["admin", "passwd", "root"], &format!("{new}\n"));
    assert!(out.status.success(), "admin passwd: {}", stderr(&out));
    fails(&verify(&gw, "root", PASSWORD, &next), &["admin", "verify", "old password"], "password is wrong");
    // The new password passes (the code, already used, is what is refused).
    fails(&verify(&gw, "root", new, &next), &["admin", "verify", "new password"], "already used");
}

#[test]
fn admin_lockout_after_repeated_failures() {
    let gw = Gateway::start(config());
    let out = cli_with_input(&gw, &["admin", "add", "ops-admin"], &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let (secret, _, out) = enrol(&gw, "ops-admin", |s| Some(totp_code(s, now_unix())));
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..5 {
        fails(&verify(&gw, "ops-admin", "not the password", "000000"), &["admin", "verify"], "refused");
    }
    let a = admin_entry(&gw, "ops-admin");
    assert_eq!((a["failed_attempts"].clone(), a["locked"].clone()), (json!(5), json!(true)), "{a}");
    let (table, _) = ok(&gw, &["admin", "list"]);
    assert!(table.lines().any(|l| l.starts_with("ops-admin") && l.contains(" 5 ")), "{table}");
    // Locked: the right credentials are refused too.
    let next = totp_code(&secret, now_unix() + 30);
    fails(&verify(&gw, "ops-admin", PASSWORD, &next), &["admin", "verify", "locked"], "locked until");
    // A new password lifts the lockout.
    let out = cli_with_input(&gw, &["admin", "passwd", "ops-admin"], &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = verify(&gw, "ops-admin", PASSWORD, &next);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = admin_entry(&gw, "ops-admin");
    assert_eq!((a["failed_attempts"].clone(), a["locked"].clone()), (json!(0), json!(false)), "{a}");
}

#[test]
fn admin_errors_are_named_and_exit_non_zero() {
    let gw = Gateway::start(config());
    for (args, needle) in [
        (&["admin", "add", "bad name"][..], "invalid administrator name"),
        (&["admin", "totp", "nobody"][..], "no administrator \"nobody\""),
        (&["admin", "passwd", "nobody"][..], "no administrator \"nobody\""),
        (&["admin", "rm", "nobody"][..], "no administrator \"nobody\""),
    ] {
        fails(&cli_with_input(&gw, args, &format!("{PASSWORD}\n")), args, needle);
    }
    let out = cli_with_input(&gw, &["admin", "add", "temp"], &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_with_input(&gw, &["admin", "passwd", "temp"], "tab\tin the password\n");
    fails(&out, &["admin", "passwd"], "control characters");
    ok(&gw, &["admin", "rm", "temp"]);
    let (out, _) = ok(&gw, &["admin", "list", "--json"]);
    assert!(out.is_empty(), "{out}");
}
