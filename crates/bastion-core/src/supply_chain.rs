//! Whether a stdio server's command fetches code that can change under it.
//!
//! Launchers such as `npx`, `uvx`, `pipx run` and `docker run` download
//! what they run when they start. Without an exact version, every restart
//! may run something new: whatever a registry serves under the name at
//! that moment, including a release published by someone who took over
//! the package. [`check`] recognises these launchers from a server's
//! `command` and `args` and says whether each package they fetch is
//! pinned:
//!
//! - npm (`npx`, `npm exec`/`npm x`, `pnpm dlx`/`pnpx`, `bunx`/`bun x`,
//!   `yarn dlx`): `pkg@1.2.3` or `@scope/pkg@1.2.3`, an exact semantic
//!   version. Ranges (`^1.2.3`, `1.x`, `>=1`) and dist-tags (`latest`,
//!   `next`) are not pins. Packages named with `-p`/`--package` are the
//!   ones fetched; the word after them is then a command name.
//! - Python (`uvx`/`uv tool run`, `pipx run`): `pkg==1.2.3` (or `===`),
//!   also in `--from`/`--spec`; for `uvx`, `pkg@1.2.3`. Requirements added
//!   with `--with` must be pinned too.
//! - Container images (`docker run`, `podman run`, `nerdctl run`): a digest
//!   (`image@sha256:…`) is the strong pin; an explicit version tag
//!   (`image:1.2.3`, a tag starting with a digit or `v` and a digit) is
//!   accepted as a version, although a registry can move a tag. No tag, or
//!   `latest`, is not a pin.
//! - A local path (`./dir`, `/opt/pkg`, `file:`) fetches nothing and is
//!   taken as pinned; a git source is pinned only by a full commit id; a
//!   download URL only by a `#sha256=` hash (Python).
//!
//! Options the check does not know, written without `=VALUE`, make it
//! unable to tell which word is the package: that is reported as unpinned
//! (fail closed), with the advice to write the option as `--name=VALUE`.
//!
//! This is a pure function of the configuration: nothing is run, read or
//! fetched.

use std::fmt;

/// A program that downloads what it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Launcher {
    Npx,
    NpmExec,
    PnpmDlx,
    Bunx,
    YarnDlx,
    Uvx,
    PipxRun,
    DockerRun,
    PodmanRun,
    NerdctlRun,
}

impl Launcher {
    /// How the launcher is usually written.
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Npx => "npx",
            Launcher::NpmExec => "npm exec",
            Launcher::PnpmDlx => "pnpm dlx",
            Launcher::Bunx => "bunx",
            Launcher::YarnDlx => "yarn dlx",
            Launcher::Uvx => "uvx",
            Launcher::PipxRun => "pipx run",
            Launcher::DockerRun => "docker run",
            Launcher::PodmanRun => "podman run",
            Launcher::NerdctlRun => "nerdctl run",
        }
    }

    fn ecosystem(self) -> Ecosystem {
        match self {
            Launcher::Npx | Launcher::NpmExec | Launcher::PnpmDlx | Launcher::Bunx | Launcher::YarnDlx => {
                Ecosystem::Npm
            }
            Launcher::Uvx => Ecosystem::Uv,
            Launcher::PipxRun => Ecosystem::Pipx,
            Launcher::DockerRun | Launcher::PodmanRun | Launcher::NerdctlRun => Ecosystem::Image,
        }
    }
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ecosystem {
    Npm,
    Uv,
    Pipx,
    Image,
}

/// A server's command is a launcher; `unpinned` says what it fetches
/// without a pin (`None`: everything is pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub unpinned: Option<Unpinned>,
}

/// Why what a launcher fetches is not pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpinned {
    /// The package or image as written (URLs without what may be a secret),
    /// when there is one.
    pub spec: Option<String>,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No version at all (`pkg`, `@scope/pkg`, an image without a tag).
    NoVersion,
    /// A version that is not one exact release: a range, a wildcard, a
    /// dist-tag (`latest`, `next`), an image's `latest` or a named tag.
    NotExact,
    /// A git source without a full commit id, or a download URL without a
    /// hash: what it serves can change.
    Movable,
    /// The launcher is given no package.
    NoPackage,
    /// An option the check does not know, without `=VALUE`: which word is
    /// the package cannot be told.
    UnknownOption(String),
    /// A shell command (`npx -c`) without packages named by `--package`.
    ShellCommand,
    /// Requirements read from a file (`uvx --with-requirements`), which the
    /// check cannot see.
    RequirementsFile,
}

impl Launch {
    /// What is unpinned and how to pin it, in one sentence; `None` when
    /// everything is pinned.
    pub fn problem(&self) -> Option<String> {
        let u = self.unpinned.as_ref()?;
        let launcher = self.launcher;
        let spec = u.spec.as_deref().unwrap_or("");
        let eco = launcher.ecosystem();
        Some(match &u.problem {
            Problem::NoVersion | Problem::NotExact => {
                let what = if u.problem == Problem::NoVersion { "names no version" } else { "is not an exact version" };
                format!("{launcher} runs `{spec}`, which {what}; pin it: {}", how_to_pin(eco, spec))
            }
            Problem::Movable => format!(
                "{launcher} runs `{spec}`, whose content can change; pin a git source to a full commit id{}, or use a registry release with an exact version",
                if matches!(eco, Ecosystem::Uv | Ecosystem::Pipx) {
                    " and a download URL with #sha256=…"
                } else {
                    ""
                }
            ),
            Problem::NoPackage => format!("{launcher} is given no package to run"),
            Problem::UnknownOption(opt) => format!(
                "{launcher}: cannot tell which argument is the package after the option `{opt}`; write it as `{opt}=VALUE`, or after the package"
            ),
            Problem::ShellCommand => {
                format!("{launcher} runs a shell command; name each package it needs with `--package NAME@VERSION`")
            }
            Problem::RequirementsFile => format!(
                "{launcher} reads requirements from a file, which cannot be checked here; name each with `--with NAME==VERSION`"
            ),
        })
    }
}

/// The advice for a spec without an exact version.
fn how_to_pin(eco: Ecosystem, spec: &str) -> String {
    match eco {
        Ecosystem::Npm => {
            let name = npm_name(spec).0;
            format!("`{name}@X.Y.Z` (an exact version)")
        }
        Ecosystem::Uv => format!("`{}==X.Y.Z` (or `{0}@X.Y.Z`)", py_name(spec)),
        Ecosystem::Pipx => format!("`--spec {}==X.Y.Z`", py_name(spec)),
        Ecosystem::Image => {
            let repo = image_repository(spec);
            format!("`{repo}@sha256:<digest>` (a digest cannot be moved; `{repo}:X.Y.Z`, a version tag, is accepted)")
        }
    }
}

/// Whether `command` with `args` is a launcher, and if so whether what it
/// fetches is pinned. `None`: not a launcher Bastion knows (a program run
/// as it is: its own file can be pinned with `sha256`).
pub fn check(command: &str, args: &[String]) -> Option<Launch> {
    let program = program_name(command);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (launcher, rest): (Launcher, &[&str]) = match program.as_str() {
        "npx" => (Launcher::Npx, &args),
        "pnpx" => (Launcher::PnpmDlx, &args),
        "bunx" => (Launcher::Bunx, &args),
        "uvx" => (Launcher::Uvx, &args),
        "npm" => (Launcher::NpmExec, after_subcommand(&args, NPM_OPTIONS, &[&["exec"], &["x"]])?),
        "pnpm" => (Launcher::PnpmDlx, after_subcommand(&args, PNPM_OPTIONS, &[&["dlx"]])?),
        "bun" => (Launcher::Bunx, after_subcommand(&args, BUNX_OPTIONS, &[&["x"]])?),
        "yarn" => (Launcher::YarnDlx, after_subcommand(&args, YARN_OPTIONS, &[&["dlx"]])?),
        "uv" => (Launcher::Uvx, after_subcommand(&args, UV_OPTIONS, &[&["tool", "run"]])?),
        "pipx" => (Launcher::PipxRun, after_subcommand(&args, PIPX_OPTIONS, &[&["run"]])?),
        "docker" | "podman" | "nerdctl" => {
            let launcher = match program.as_str() {
                "docker" => Launcher::DockerRun,
                "podman" => Launcher::PodmanRun,
                _ => Launcher::NerdctlRun,
            };
            (launcher, after_subcommand(&args, CONTAINER_GLOBAL_OPTIONS, &[&["run"], &["container", "run"]])?)
        }
        _ => return None,
    };
    let unpinned = match launcher.ecosystem() {
        Ecosystem::Npm => check_npm(launcher, rest),
        Ecosystem::Uv => check_uv(rest),
        Ecosystem::Pipx => check_pipx(rest),
        Ecosystem::Image => check_image(rest),
    }
    .err();
    Some(Launch { launcher, unpinned })
}

/// The program's file name, lower-case, without a Windows suffix:
/// `/usr/local/bin/npx`, `npx.cmd` and `NPX.EXE` are all `npx`.
fn program_name(command: &str) -> String {
    let name = command.rsplit(['/', '\\']).next().unwrap_or(command).to_ascii_lowercase();
    for suffix in [".cmd", ".exe", ".bat", ".ps1"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    name
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

/// What an option does to the words after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Takes no value.
    Flag,
    /// Takes a value (the next word, or after `=`).
    Value,
    /// Names a package that is fetched (takes a value).
    Package,
    /// Names a requirement fetched beside the package (takes a value).
    With,
    /// Requirements from a file (takes a value).
    Requirements,
    /// The command is a shell string (npx: takes it as its value).
    ShellValue,
    /// The command is a shell string (pnpm: a flag).
    ShellFlag,
    /// What follows is a local path, not a package (`pipx run --path`,
    /// `podman run --rootfs`).
    Local,
}

/// Options by name (`--yes`, `-y`) and what they do.
type Options = &'static [(&'static str, Kind)];

fn kind_of(options: Options, name: &str) -> Option<Kind> {
    options.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// What the words before the command say.
#[derive(Debug, Default)]
struct Parsed<'a> {
    /// Packages named by options (`--package`, `--from`, `--spec`).
    packages: Vec<&'a str>,
    /// Requirements beside them (`--with`).
    with: Vec<&'a str>,
    requirements_file: bool,
    shell: bool,
    local: bool,
    /// The first word that is not an option: the package, or a command
    /// name when packages were named by options.
    positional: Option<&'a str>,
}

/// Reads options up to the first word that is not one (or `--`).
fn parse<'a>(args: &[&'a str], options: Options) -> Result<Parsed<'a>, Problem> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        i += 1;
        if arg == "--" {
            p.positional = args.get(i).copied();
            return Ok(p);
        }
        if !arg.starts_with('-') || arg == "-" {
            p.positional = Some(arg);
            return Ok(p);
        }
        // `--name=value`, `--name value`, `--flag`, `-abc`, `-p value`, `-pvalue`.
        let (names, attached): (Vec<String>, Option<&str>) = if arg.starts_with("--") {
            match arg.split_once('=') {
                Some((n, v)) => (vec![n.to_string()], Some(v)),
                None => (vec![arg.to_string()], None),
            }
        } else if let Some((n, v)) = arg.split_once('=') {
            (vec![n.to_string()], Some(v))
        } else {
            // A cluster of short options; one that takes a value takes the
            // rest of the word, or the next word.
            let chars: Vec<char> = arg[1..].chars().collect();
            let mut names = Vec::new();
            let mut rest = None;
            for (j, c) in chars.iter().enumerate() {
                let name = format!("-{c}");
                let takes_value = kind_of(options, &name).is_some_and(takes_value);
                names.push(name);
                if takes_value {
                    let tail: String = chars[j + 1..].iter().collect();
                    if !tail.is_empty() {
                        rest = Some(&arg[arg.len() - tail.len()..]);
                    }
                    break;
                }
            }
            (names, rest)
        };
        let last = names.len() - 1;
        for (j, name) in names.iter().enumerate() {
            let kind = match kind_of(options, name) {
                Some(k) => k,
                // `--no-…` negates a flag; any option with `=VALUE` is whole.
                None if name.starts_with("--no-") && attached.is_none() => Kind::Flag,
                None if attached.is_some() && j == last => Kind::Value,
                None => return Err(Problem::UnknownOption(name.clone())),
            };
            let value = if takes_value(kind) && j == last {
                match attached {
                    Some(v) => Some(v),
                    None => {
                        let v = args.get(i).copied();
                        i += 1;
                        v
                    }
                }
            } else {
                None
            };
            match kind {
                Kind::Flag | Kind::Value => {}
                Kind::Package => p.packages.extend(value),
                Kind::With => p.with.extend(value),
                Kind::Requirements => p.requirements_file = true,
                Kind::ShellValue | Kind::ShellFlag => p.shell = true,
                Kind::Local => p.local = true,
            }
        }
    }
    Ok(p)
}

fn takes_value(kind: Kind) -> bool {
    matches!(kind, Kind::Value | Kind::Package | Kind::With | Kind::Requirements | Kind::ShellValue)
}

/// The words after a launcher's subcommand (`npm exec …`, `uv tool run …`),
/// skipping the options before it; `None` when the subcommand is another
/// (`npm start` fetches nothing).
fn after_subcommand<'a, 'b>(args: &'b [&'a str], options: Options, subcommands: &[&[&str]]) -> Option<&'b [&'a str]> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        i += 1;
        if !arg.contains('=') && kind_of(options, arg).is_some_and(takes_value) {
            i += 1;
        }
    }
    let rest = args.get(i..)?;
    subcommands.iter().find_map(|words| {
        (rest.len() >= words.len() && rest.iter().zip(words.iter()).all(|(a, w)| a == w)).then(|| &rest[words.len()..])
    })
}

// ---------------------------------------------------------------------------
// npm
// ---------------------------------------------------------------------------

const NPM_OPTIONS: Options = &[
    ("--yes", Kind::Flag),
    ("-y", Kind::Flag),
    ("--no", Kind::Flag),
    ("--quiet", Kind::Flag),
    ("-q", Kind::Flag),
    ("--silent", Kind::Flag),
    ("-s", Kind::Flag),
    ("--verbose", Kind::Flag),
    ("--prefer-offline", Kind::Flag),
    ("--prefer-online", Kind::Flag),
    ("--offline", Kind::Flag),
    ("--ignore-existing", Kind::Flag),
    ("--package", Kind::Package),
    ("-p", Kind::Package),
    ("--call", Kind::ShellValue),
    ("-c", Kind::ShellValue),
    ("--registry", Kind::Value),
    ("--cache", Kind::Value),
    ("--userconfig", Kind::Value),
    ("--loglevel", Kind::Value),
    ("--prefix", Kind::Value),
    ("--workspace", Kind::Value),
    ("-w", Kind::Value),
    ("--workspaces", Kind::Flag),
    ("--include-workspace-root", Kind::Flag),
];

const PNPM_OPTIONS: Options = &[
    ("--package", Kind::Package),
    ("--shell-mode", Kind::ShellFlag),
    ("-c", Kind::ShellFlag),
    ("--silent", Kind::Flag),
    ("-s", Kind::Flag),
    ("--allow-build", Kind::Value),
    ("--reporter", Kind::Value),
    ("--dir", Kind::Value),
    ("-C", Kind::Value),
    ("--registry", Kind::Value),
    ("--prefer-offline", Kind::Flag),
    ("--offline", Kind::Flag),
];

const BUNX_OPTIONS: Options = &[
    ("--bun", Kind::Flag),
    ("--package", Kind::Package),
    ("-p", Kind::Package),
    ("--silent", Kind::Flag),
    ("--verbose", Kind::Flag),
    ("--no-install", Kind::Flag),
];

const YARN_OPTIONS: Options =
    &[("--package", Kind::Package), ("-p", Kind::Package), ("--quiet", Kind::Flag), ("-q", Kind::Flag)];

fn check_npm(launcher: Launcher, args: &[&str]) -> Result<(), Unpinned> {
    let options = match launcher {
        Launcher::PnpmDlx => PNPM_OPTIONS,
        Launcher::Bunx => BUNX_OPTIONS,
        Launcher::YarnDlx => YARN_OPTIONS,
        _ => NPM_OPTIONS,
    };
    let p = parse(args, options).map_err(|problem| Unpinned { spec: None, problem })?;
    if !p.packages.is_empty() {
        // The packages named are what is fetched; the word after them is a
        // command they provide.
        return p.packages.iter().try_for_each(|s| npm_pinned(s));
    }
    if p.shell {
        return Err(Unpinned { spec: None, problem: Problem::ShellCommand });
    }
    match p.positional {
        Some(spec) => npm_pinned(spec),
        None => Err(Unpinned { spec: None, problem: Problem::NoPackage }),
    }
}

/// An npm package spec's name and version part (after the `@` that
/// separates them).
fn npm_name(spec: &str) -> (&str, Option<&str>) {
    let spec = spec.strip_prefix("npm:").unwrap_or(spec);
    let from = usize::from(spec.starts_with('@'));
    match spec[from..].find('@') {
        Some(at) => (&spec[..from + at], Some(&spec[from + at + 1..])),
        None => (spec, None),
    }
}

fn npm_pinned(spec: &str) -> Result<(), Unpinned> {
    let unpinned = |problem| Err(Unpinned { spec: Some(shown(spec)), problem });
    if is_local(spec) {
        return Ok(());
    }
    let lower = spec.to_ascii_lowercase();
    let git_prefixes = ["git+", "git://", "github:", "gitlab:", "bitbucket:", "gist:"];
    // `user/repo` (no scope) is a GitHub repository to npm.
    let shorthand = !spec.starts_with('@') && !spec.contains(':') && spec.contains('/');
    if git_prefixes.iter().any(|p| lower.starts_with(p)) || shorthand {
        let commit = spec.rsplit_once('#').map(|(_, c)| c);
        return if commit.is_some_and(is_commit) { Ok(()) } else { unpinned(Problem::Movable) };
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return unpinned(Problem::Movable);
    }
    match npm_name(spec).1 {
        None | Some("") => unpinned(Problem::NoVersion),
        Some(v) if is_exact_semver(v) => Ok(()),
        Some(_) => unpinned(Problem::NotExact),
    }
}

/// `1.2.3`, `1.2.3-rc.1`, `1.2.3+build` (npm also takes a leading `v` or
/// `=`): one release, not a range or a tag.
fn is_exact_semver(v: &str) -> bool {
    let v = v.strip_prefix(['v', '=']).unwrap_or(v);
    let (core, build) = v.split_once('+').map_or((v, None), |(c, b)| (c, Some(b)));
    let (core, pre) = core.split_once('-').map_or((core, None), |(c, p)| (c, Some(p)));
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let dotted = |s: &str| s.split('.').all(ident);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.len() <= 16 && p.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(dotted)
        && build.is_none_or(dotted)
}

// ---------------------------------------------------------------------------
// Python
// ---------------------------------------------------------------------------

const UV_OPTIONS: Options = &[
    ("--from", Kind::Package),
    ("--with", Kind::With),
    ("-w", Kind::With),
    ("--with-requirements", Kind::Requirements),
    ("--with-editable", Kind::Value),
    ("--python", Kind::Value),
    ("-p", Kind::Value),
    ("--index", Kind::Value),
    ("--default-index", Kind::Value),
    ("--index-url", Kind::Value),
    ("-i", Kind::Value),
    ("--extra-index-url", Kind::Value),
    ("--find-links", Kind::Value),
    ("-f", Kind::Value),
    ("--index-strategy", Kind::Value),
    ("--keyring-provider", Kind::Value),
    ("--resolution", Kind::Value),
    ("--prerelease", Kind::Value),
    ("--exclude-newer", Kind::Value),
    ("--constraints", Kind::Value),
    ("--constraint", Kind::Value),
    ("-c", Kind::Value),
    ("--overrides", Kind::Value),
    ("--build-constraints", Kind::Value),
    ("-b", Kind::Value),
    ("--env-file", Kind::Value),
    ("--cache-dir", Kind::Value),
    ("--config-file", Kind::Value),
    ("--directory", Kind::Value),
    ("--project", Kind::Value),
    ("--color", Kind::Value),
    ("--link-mode", Kind::Value),
    ("--refresh-package", Kind::Value),
    ("--reinstall-package", Kind::Value),
    ("--upgrade-package", Kind::Value),
    ("-P", Kind::Value),
    ("--config-setting", Kind::Value),
    ("-C", Kind::Value),
    ("--python-preference", Kind::Value),
    ("--allow-insecure-host", Kind::Value),
    ("--no-build-package", Kind::Value),
    ("--no-binary-package", Kind::Value),
    ("--isolated", Kind::Flag),
    ("--offline", Kind::Flag),
    ("--refresh", Kind::Flag),
    ("--reinstall", Kind::Flag),
    ("--upgrade", Kind::Flag),
    ("-U", Kind::Flag),
    ("--quiet", Kind::Flag),
    ("-q", Kind::Flag),
    ("--verbose", Kind::Flag),
    ("-v", Kind::Flag),
    ("-n", Kind::Flag),
    ("--native-tls", Kind::Flag),
    ("--compile-bytecode", Kind::Flag),
    ("--managed-python", Kind::Flag),
    ("--show-resolution", Kind::Flag),
    ("--help", Kind::Flag),
    ("-h", Kind::Flag),
];

const PIPX_OPTIONS: Options = &[
    ("--spec", Kind::Package),
    ("--path", Kind::Local),
    ("--python", Kind::Value),
    ("--pip-args", Kind::Value),
    ("--index-url", Kind::Value),
    ("-i", Kind::Value),
    ("--backend", Kind::Value),
    ("--editable", Kind::Flag),
    ("-e", Kind::Flag),
    ("--pypackages", Kind::Flag),
    ("--system-site-packages", Kind::Flag),
    ("--fetch-missing-python", Kind::Flag),
    ("--verbose", Kind::Flag),
    ("-v", Kind::Flag),
    ("--quiet", Kind::Flag),
    ("-q", Kind::Flag),
];

fn check_uv(args: &[&str]) -> Result<(), Unpinned> {
    let p = parse(args, UV_OPTIONS).map_err(|problem| Unpinned { spec: None, problem })?;
    if p.requirements_file {
        return Err(Unpinned { spec: None, problem: Problem::RequirementsFile });
    }
    for w in &p.with {
        py_pinned(w, false)?;
    }
    if !p.packages.is_empty() {
        return p.packages.iter().try_for_each(|s| py_pinned(s, true));
    }
    match p.positional {
        Some(spec) => py_pinned(spec, true),
        None => Err(Unpinned { spec: None, problem: Problem::NoPackage }),
    }
}

fn check_pipx(args: &[&str]) -> Result<(), Unpinned> {
    let p = parse(args, PIPX_OPTIONS).map_err(|problem| Unpinned { spec: None, problem })?;
    if p.local {
        return Ok(());
    }
    if !p.packages.is_empty() {
        return p.packages.iter().try_for_each(|s| py_pinned(s, false));
    }
    match p.positional {
        Some(spec) => py_pinned(spec, false),
        None => Err(Unpinned { spec: None, problem: Problem::NoPackage }),
    }
}

/// The distribution name a Python requirement starts with.
fn py_name(spec: &str) -> &str {
    let end = spec.find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).unwrap_or(spec.len());
    if end == 0 { spec } else { &spec[..end] }
}

/// A Python requirement pinned to one release: `name==1.2.3`,
/// `name[extra]===1.2.3`, with `at` also `name@1.2.3` (uvx's shorthand); a
/// direct reference (`name @ URL`) pinned by a commit or a hash.
fn py_pinned(spec: &str, at: bool) -> Result<(), Unpinned> {
    let unpinned = |problem| Err(Unpinned { spec: Some(shown(spec)), problem });
    if is_local(spec) {
        return Ok(());
    }
    if spec.contains("://") || spec.to_ascii_lowercase().starts_with("git+") {
        return if url_pinned(spec) { Ok(()) } else { unpinned(Problem::Movable) };
    }
    // Spaces are allowed around operators; markers (`; python_version…`)
    // do not change the version.
    let compact: String = spec.split(';').next().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
    let name = py_name(&compact);
    let mut rest = &compact[name.len()..];
    if let Some(after) = rest.strip_prefix('[') {
        rest = after.split_once(']').map_or("", |(_, r)| r);
    }
    if rest.is_empty() {
        return unpinned(Problem::NoVersion);
    }
    let version = if let Some(v) = rest.strip_prefix("===") {
        v
    } else if let Some(v) = rest.strip_prefix("==") {
        v
    } else if let Some(v) = rest.strip_prefix('@').filter(|_| at) {
        v
    } else {
        return unpinned(Problem::NotExact);
    };
    let one_version = version.starts_with(|c: char| c.is_ascii_digit())
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+!".contains(&b));
    if one_version { Ok(()) } else { unpinned(Problem::NotExact) }
}

/// A direct reference that cannot change: a git source at a full commit id
/// (`…@<40 hex>`), or a download with a `#sha256=` hash.
fn url_pinned(spec: &str) -> bool {
    let (before, fragment) = spec.split_once('#').map_or((spec, ""), |(b, f)| (b, f));
    if fragment.split('&').any(|kv| kv.strip_prefix("sha256=").is_some_and(|h| is_hex(h, 64))) {
        return true;
    }
    let path = before.split_once("://").map_or(before, |(_, p)| p);
    path.rsplit_once('@').is_some_and(|(_, rev)| is_commit(rev))
}

// ---------------------------------------------------------------------------
// Container images
// ---------------------------------------------------------------------------

/// Options of `docker`/`podman`/`nerdctl` before the subcommand.
const CONTAINER_GLOBAL_OPTIONS: Options = &[
    ("--host", Kind::Value),
    ("-H", Kind::Value),
    ("--context", Kind::Value),
    ("-c", Kind::Value),
    ("--config", Kind::Value),
    ("--log-level", Kind::Value),
    ("-l", Kind::Value),
    ("--tlscacert", Kind::Value),
    ("--tlscert", Kind::Value),
    ("--tlskey", Kind::Value),
    ("--connection", Kind::Value),
    ("--url", Kind::Value),
    ("--identity", Kind::Value),
    ("--root", Kind::Value),
    ("--runroot", Kind::Value),
    ("--storage-driver", Kind::Value),
    ("--namespace", Kind::Value),
    ("-n", Kind::Value),
    ("--address", Kind::Value),
    ("-a", Kind::Value),
];

const CONTAINER_RUN_OPTIONS: Options = &[
    // Flags.
    ("-d", Kind::Flag),
    ("--detach", Kind::Flag),
    ("-i", Kind::Flag),
    ("--interactive", Kind::Flag),
    ("-t", Kind::Flag),
    ("--tty", Kind::Flag),
    ("--rm", Kind::Flag),
    ("--init", Kind::Flag),
    ("--privileged", Kind::Flag),
    ("--read-only", Kind::Flag),
    ("-P", Kind::Flag),
    ("--publish-all", Kind::Flag),
    ("--disable-content-trust", Kind::Flag),
    ("--oom-kill-disable", Kind::Flag),
    ("--sig-proxy", Kind::Flag),
    ("-q", Kind::Flag),
    ("--quiet", Kind::Flag),
    ("--replace", Kind::Flag),
    ("--env-host", Kind::Flag),
    ("--http-proxy", Kind::Flag),
    ("--tls-verify", Kind::Flag),
    ("--unsetenv-all", Kind::Flag),
    ("--read-only-tmpfs", Kind::Flag),
    ("--rootfs", Kind::Local),
    // Options with a value.
    ("-a", Kind::Value),
    ("--attach", Kind::Value),
    ("-e", Kind::Value),
    ("--env", Kind::Value),
    ("--env-file", Kind::Value),
    ("-v", Kind::Value),
    ("--volume", Kind::Value),
    ("--volumes-from", Kind::Value),
    ("--mount", Kind::Value),
    ("--tmpfs", Kind::Value),
    ("-p", Kind::Value),
    ("--publish", Kind::Value),
    ("--expose", Kind::Value),
    ("--name", Kind::Value),
    ("--network", Kind::Value),
    ("--net", Kind::Value),
    ("--network-alias", Kind::Value),
    ("--net-alias", Kind::Value),
    ("--ip", Kind::Value),
    ("--ip6", Kind::Value),
    ("--mac-address", Kind::Value),
    ("--dns", Kind::Value),
    ("--dns-option", Kind::Value),
    ("--dns-search", Kind::Value),
    ("--add-host", Kind::Value),
    ("-h", Kind::Value),
    ("--hostname", Kind::Value),
    ("--domainname", Kind::Value),
    ("-u", Kind::Value),
    ("--user", Kind::Value),
    ("--group-add", Kind::Value),
    ("-w", Kind::Value),
    ("--workdir", Kind::Value),
    ("--entrypoint", Kind::Value),
    ("-l", Kind::Value),
    ("--label", Kind::Value),
    ("--label-file", Kind::Value),
    ("--annotation", Kind::Value),
    ("-m", Kind::Value),
    ("--memory", Kind::Value),
    ("--memory-reservation", Kind::Value),
    ("--memory-swap", Kind::Value),
    ("--memory-swappiness", Kind::Value),
    ("--kernel-memory", Kind::Value),
    ("--shm-size", Kind::Value),
    ("-c", Kind::Value),
    ("--cpu-shares", Kind::Value),
    ("--cpus", Kind::Value),
    ("--cpuset-cpus", Kind::Value),
    ("--cpuset-mems", Kind::Value),
    ("--cpu-period", Kind::Value),
    ("--cpu-quota", Kind::Value),
    ("--cpu-rt-period", Kind::Value),
    ("--cpu-rt-runtime", Kind::Value),
    ("--blkio-weight", Kind::Value),
    ("--blkio-weight-device", Kind::Value),
    ("--device", Kind::Value),
    ("--device-cgroup-rule", Kind::Value),
    ("--device-read-bps", Kind::Value),
    ("--device-read-iops", Kind::Value),
    ("--device-write-bps", Kind::Value),
    ("--device-write-iops", Kind::Value),
    ("--gpus", Kind::Value),
    ("--cap-add", Kind::Value),
    ("--cap-drop", Kind::Value),
    ("--security-opt", Kind::Value),
    ("--cgroup-parent", Kind::Value),
    ("--cgroupns", Kind::Value),
    ("--cgroups", Kind::Value),
    ("--cidfile", Kind::Value),
    ("--ipc", Kind::Value),
    ("--pid", Kind::Value),
    ("--pids-limit", Kind::Value),
    ("--uts", Kind::Value),
    ("--userns", Kind::Value),
    ("--isolation", Kind::Value),
    ("--runtime", Kind::Value),
    ("--platform", Kind::Value),
    ("--arch", Kind::Value),
    ("--os", Kind::Value),
    ("--variant", Kind::Value),
    ("--pull", Kind::Value),
    ("--restart", Kind::Value),
    ("--stop-signal", Kind::Value),
    ("--stop-timeout", Kind::Value),
    ("--storage-opt", Kind::Value),
    ("--sysctl", Kind::Value),
    ("--ulimit", Kind::Value),
    ("--log-driver", Kind::Value),
    ("--log-opt", Kind::Value),
    ("--link", Kind::Value),
    ("--link-local-ip", Kind::Value),
    ("--oom-score-adj", Kind::Value),
    ("--volume-driver", Kind::Value),
    ("--detach-keys", Kind::Value),
    ("--health-cmd", Kind::Value),
    ("--health-interval", Kind::Value),
    ("--health-retries", Kind::Value),
    ("--health-start-interval", Kind::Value),
    ("--health-start-period", Kind::Value),
    ("--health-timeout", Kind::Value),
    ("--pod", Kind::Value),
    ("--secret", Kind::Value),
    ("--authfile", Kind::Value),
    ("--creds", Kind::Value),
    ("--cert-dir", Kind::Value),
    ("--decryption-key", Kind::Value),
    ("--uidmap", Kind::Value),
    ("--gidmap", Kind::Value),
    ("--umask", Kind::Value),
    ("--unsetenv", Kind::Value),
    ("--systemd", Kind::Value),
    ("--sdnotify", Kind::Value),
    ("--seccomp-policy", Kind::Value),
    ("--timeout", Kind::Value),
    ("--preserve-fds", Kind::Value),
    ("--requires", Kind::Value),
    ("--conmon-pidfile", Kind::Value),
    ("--pidfile", Kind::Value),
    ("--image-volume", Kind::Value),
    ("--personality", Kind::Value),
    ("--retry", Kind::Value),
    ("--retry-delay", Kind::Value),
];

fn check_image(args: &[&str]) -> Result<(), Unpinned> {
    let p = parse(args, CONTAINER_RUN_OPTIONS).map_err(|problem| Unpinned { spec: None, problem })?;
    if p.local {
        return Ok(());
    }
    let Some(image) = p.positional else {
        return Err(Unpinned { spec: None, problem: Problem::NoPackage });
    };
    let unpinned = |problem| Err(Unpinned { spec: Some(shown(image)), problem });
    if let Some((_, digest)) = image.split_once('@') {
        return match digest.strip_prefix("sha256:") {
            Some(hex) if is_hex(hex, 64) => Ok(()),
            _ => unpinned(Problem::NotExact),
        };
    }
    // A tag is after the last `:` of the last path component (a `:` before
    // a `/` is a registry's port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':').map(|(_, t)| t) {
        None | Some("") => unpinned(Problem::NoVersion),
        Some(tag) => {
            let t = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
            if t.starts_with(|c: char| c.is_ascii_digit()) { Ok(()) } else { unpinned(Problem::NotExact) }
        }
    }
}

/// An image reference without its tag or digest.
fn image_repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].find(':') {
        Some(colon) => &image[..slash + colon],
        None => image,
    }
}

// ---------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------

/// A path on this machine: nothing is downloaded.
fn is_local(spec: &str) -> bool {
    spec.starts_with(['.', '/', '~']) || spec.to_ascii_lowercase().starts_with("file:")
}

/// A full git commit id (SHA-1 or SHA-256).
fn is_commit(s: &str) -> bool {
    is_hex(s, 40) || is_hex(s, 64)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A spec as it may be shown: a URL loses what may be a secret (user,
/// password, query), and a long one is cut.
fn shown(spec: &str) -> String {
    let s = match spec.find("://") {
        Some(i) => {
            // The URL starts with its scheme (`git+https`), which may follow
            // a name (`pkg @ git+https://…`).
            let start =
                spec[..i].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c))).map_or(0, |j| j + 1);
            format!("{}{}", &spec[..start], crate::redact::url(&spec[start..]))
        }
        None => spec.to_string(),
    };
    let s: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.chars().count() > 200 { format!("{}…", s.chars().take(200).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests;
