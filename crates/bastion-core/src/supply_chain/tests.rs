use super::*;

fn run(command: &str, args: &[&str]) -> Option<Launch> {
    check(command, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

/// The launcher recognised, and the problem (`None`: pinned).
fn verdict(command: &str, args: &[&str]) -> (Launcher, Option<Problem>) {
    let launch = run(command, args).unwrap_or_else(|| panic!("{command} {args:?} is a launcher"));
    (launch.launcher, launch.unpinned.map(|u| u.problem))
}

fn pinned(command: &str, args: &[&str]) {
    let launch = run(command, args).unwrap_or_else(|| panic!("{command} {args:?} is a launcher"));
    assert_eq!(launch.unpinned, None, "{command} {args:?} is pinned");
    assert_eq!(launch.problem(), None);
}

fn unpinned(command: &str, args: &[&str], problem: Problem) {
    let launch = run(command, args).unwrap_or_else(|| panic!("{command} {args:?} is a launcher"));
    assert_eq!(launch.unpinned.as_ref().map(|u| &u.problem), Some(&problem), "{command} {args:?}");
    assert!(launch.problem().is_some());
}

#[test]
fn npx_exact_versions_are_pins() {
    pinned("npx", &["-y", "@modelcontextprotocol/server-everything@2025.9.25"]);
    pinned("npx", &["--yes", "left-pad@1.3.0", "--port", "3"]);
    pinned("npx", &["mcp-server@1.2.3-rc.1"]);
    pinned("npx", &["mcp-server@1.2.3+build.5"]);
    pinned("npx", &["mcp-server@v1.2.3"]);
    pinned("npx", &["-y", "--", "@scope/pkg@0.0.1", "-y"]);
    pinned("npx", &["npm:@scope/pkg@0.0.1"]);
    // Packages named with --package are what is fetched; then a command.
    pinned("npx", &["-p", "@scope/pkg@1.0.0", "some-bin", "--flag"]);
    pinned("npx", &["--package=@scope/pkg@1.0.0", "--package", "other@2.0.0", "bin"]);
    pinned("npx", &["-p@scope/pkg@1.0.0", "bin"]);
    pinned("npx", &["--registry", "https://registry.example", "pkg@1.0.0"]);
    pinned("npx", &["--registry=https://registry.example", "pkg@1.0.0"]);
    pinned("npx", &["-yq", "pkg@1.0.0"]);
    // Something on this machine fetches nothing.
    pinned("npx", &["./local-server"]);
    pinned("npx", &["/opt/servers/thing"]);
    pinned("npx", &["file:../thing"]);
    // Git at a full commit.
    pinned("npx", &["github:owner/repo#0123456789abcdef0123456789abcdef01234567"]);
    pinned("npx", &["owner/repo#0123456789abcdef0123456789abcdef01234567"]);
}

#[test]
fn npx_without_an_exact_version_is_unpinned() {
    unpinned("npx", &["-y", "@modelcontextprotocol/server-everything"], Problem::NoVersion);
    unpinned("npx", &["@scope/pkg@"], Problem::NoVersion);
    unpinned("npx", &["pkg"], Problem::NoVersion);
    for range in
        ["^1.2.3", "~1.2.3", ">=1.0.0", "1.x", "1.2", "1", "*", "latest", "next", "1.2.3 - 2.0.0", "1.2.3||1.2.4"]
    {
        unpinned("npx", &[&format!("pkg@{range}")], Problem::NotExact);
        unpinned("npx", &[&format!("@scope/pkg@{range}")], Problem::NotExact);
    }
    // Flags before the package, `--`, and arguments after it that look
    // like pinned packages change nothing.
    unpinned("npx", &["-y", "--", "pkg", "other@1.0.0"], Problem::NoVersion);
    unpinned("npx", &["--yes", "--prefer-offline", "pkg", "x@1.0.0"], Problem::NoVersion);
    // One unpinned package among those named is enough.
    unpinned("npx", &["-p", "a@1.0.0", "-p", "b@latest", "bin"], Problem::NotExact);
    // Git and URLs that can move.
    unpinned("npx", &["github:owner/repo"], Problem::Movable);
    unpinned("npx", &["owner/repo#main"], Problem::Movable);
    unpinned("npx", &["git+https://example.com/r.git#v1.0.0"], Problem::Movable);
    unpinned("npx", &["https://example.com/pkg-1.0.0.tgz"], Problem::Movable);
}

#[test]
fn npx_edge_cases_fail_closed() {
    unpinned("npx", &[], Problem::NoPackage);
    unpinned("npx", &["-y"], Problem::NoPackage);
    unpinned("npx", &["--"], Problem::NoPackage);
    // An option the check does not know might take the next word.
    unpinned("npx", &["--mystery", "x@1.0.0", "pkg"], Problem::UnknownOption("--mystery".into()));
    unpinned("npx", &["-Z", "pkg@1.0.0"], Problem::UnknownOption("-Z".into()));
    // With `=VALUE` it is whole.
    pinned("npx", &["--mystery=x", "pkg@1.0.0"]);
    // A shell command without --package.
    unpinned("npx", &["-c", "some-server --stdio"], Problem::ShellCommand);
    pinned("npx", &["-p", "pkg@1.0.0", "-c", "some-server --stdio"]);
}

#[test]
fn the_program_is_recognised_by_its_file_name() {
    for command in ["npx", "/usr/local/bin/npx", "npx.cmd", "NPX.EXE", "C:\\node\\npx.cmd", "./node_modules/.bin/npx"] {
        assert_eq!(verdict(command, &["pkg@1.0.0"]), (Launcher::Npx, None), "{command}");
    }
    // Other programs are not launchers.
    for command in ["node", "python3", "/usr/bin/mcp-server", "npx-helper", "mynpx"] {
        assert_eq!(run(command, &["pkg"]), None, "{command}");
    }
}

#[test]
fn other_npm_launchers() {
    assert_eq!(verdict("npm", &["exec", "pkg@1.0.0"]), (Launcher::NpmExec, None));
    assert_eq!(verdict("npm", &["x", "--yes", "--", "pkg"]), (Launcher::NpmExec, Some(Problem::NoVersion)));
    assert_eq!(verdict("npm", &["--yes", "exec", "--package=pkg@1.0.0", "--", "bin"]), (Launcher::NpmExec, None));
    assert_eq!(verdict("pnpm", &["dlx", "pkg@1.0.0"]), (Launcher::PnpmDlx, None));
    assert_eq!(verdict("pnpm", &["dlx", "--package", "pkg@^1", "bin"]), (Launcher::PnpmDlx, Some(Problem::NotExact)));
    assert_eq!(verdict("pnpx", &["pkg"]), (Launcher::PnpmDlx, Some(Problem::NoVersion)));
    assert_eq!(verdict("bunx", &["--bun", "pkg@1.0.0"]), (Launcher::Bunx, None));
    assert_eq!(verdict("bun", &["x", "pkg@latest"]), (Launcher::Bunx, Some(Problem::NotExact)));
    assert_eq!(verdict("yarn", &["dlx", "-p", "pkg@1.0.0", "bin"]), (Launcher::YarnDlx, None));
    assert_eq!(verdict("yarn", &["dlx", "pkg"]), (Launcher::YarnDlx, Some(Problem::NoVersion)));
    // Other subcommands fetch nothing.
    assert_eq!(run("npm", &["start"]), None);
    assert_eq!(run("npm", &["run", "server"]), None);
    assert_eq!(run("pnpm", &["exec", "thing"]), None);
    assert_eq!(run("yarn", &["server"]), None);
    assert_eq!(run("bun", &["run", "server.ts"]), None);
}

#[test]
fn uvx() {
    pinned("uvx", &["mcp-server-time==2025.1.1"]);
    pinned("uvx", &["mcp-server-time===2025.1.1"]);
    pinned("uvx", &["mcp-server-time@0.6.2"]);
    pinned("uvx", &["mcp-server-fetch[extra]==1.0", "--arg"]);
    pinned("uvx", &["--from", "mcp-server-git==0.6.2", "mcp-server-git", "--repository", "."]);
    pinned("uvx", &["--from=mcp-server-git==0.6.2", "mcp-server-git"]);
    pinned("uvx", &["--python", "3.12", "--with", "httpx==0.27.0", "tool==1.0.0"]);
    pinned("uvx", &["--from", "git+https://github.com/o/r@0123456789abcdef0123456789abcdef01234567", "cmd"]);
    pinned("uvx", &["--from", "./local/project", "cmd"]);
    pinned("uv", &["tool", "run", "tool==1.0.0"]);
    pinned("uv", &["--quiet", "tool", "run", "--from", "tool==1.0.0", "tool"]);
    unpinned("uvx", &["mcp-server-time"], Problem::NoVersion);
    unpinned("uvx", &["mcp-server-time@latest"], Problem::NotExact);
    for spec in ["tool>=1.0", "tool~=1.0", "tool==1.*", "tool!=1.0", "tool==1.0,<2", "tool<2"] {
        unpinned("uvx", &[spec], Problem::NotExact);
    }
    // The command after --from is a name, not what is fetched.
    unpinned("uvx", &["--from", "mcp-server-git", "mcp-server-git==1.0.0"], Problem::NoVersion);
    // A requirement added beside the tool must be pinned too.
    unpinned("uvx", &["--with", "httpx", "tool==1.0.0"], Problem::NoVersion);
    unpinned("uvx", &["--with-requirements", "reqs.txt", "tool==1.0.0"], Problem::RequirementsFile);
    unpinned("uvx", &["--from", "git+https://github.com/o/r@main", "cmd"], Problem::Movable);
    unpinned("uvx", &[], Problem::NoPackage);
    unpinned("uvx", &["--frobnicate", "tool==1.0.0"], Problem::UnknownOption("--frobnicate".into()));
    assert_eq!(run("uv", &["run", "server.py"]), None);
    assert_eq!(verdict("/home/u/.local/bin/uvx", &["t==1.0"]), (Launcher::Uvx, None));
}

#[test]
fn pipx_run() {
    pinned("pipx", &["run", "--spec", "mcp-server-time==0.6.2", "mcp-server-time"]);
    pinned("pipx", &["run", "mcp-server-time==0.6.2"]);
    pinned("pipx", &["run", "--python", "python3.12", "--spec=tool==1.0", "tool"]);
    pinned("pipx", &["run", "--path", "./script.py"]);
    let hashed = format!("https://example.com/tool-1.0.whl#sha256={}", "a".repeat(64));
    pinned("pipx", &["run", "--spec", &hashed, "t"]);
    unpinned("pipx", &["run", "mcp-server-time"], Problem::NoVersion);
    unpinned("pipx", &["run", "--spec", "tool>=1", "tool"], Problem::NotExact);
    // `@` is uvx's shorthand, not pipx's.
    unpinned("pipx", &["run", "tool@1.0.0"], Problem::NotExact);
    unpinned("pipx", &["run", "--spec", "https://example.com/tool-1.0.whl", "t"], Problem::Movable);
    unpinned("pipx", &["run"], Problem::NoPackage);
    assert_eq!(run("pipx", &["install", "tool"]), None);
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn container_images() {
    let by_digest = format!("mcp/fetch@{DIGEST}");
    pinned("docker", &["run", "-i", "--rm", &by_digest]);
    pinned("docker", &["run", "-i", "--rm", &format!("ghcr.io/o/img:1.0@{DIGEST}")]);
    // A version tag is accepted as a version.
    pinned("docker", &["run", "-i", "--rm", "mcp/fetch:1.2.3"]);
    pinned("docker", &["run", "-i", "mcp/fetch:v1.2"]);
    pinned("docker", &["run", "localhost:5000/mcp/fetch:2025.1"]);
    // Options with values are skipped, in every form.
    pinned(
        "docker",
        &[
            "run",
            "-i",
            "--rm",
            "-e",
            "TOKEN",
            "-e=A=1",
            "-eB=2",
            "-v",
            "/a:/b",
            "--name",
            "n",
            "--env-file",
            "f",
            "-p",
            "80:80",
            "--network",
            "host",
            "--network=none",
            "-it",
            "--user=1000",
            "-w",
            "/w",
            &by_digest,
            "--flag",
            "latest",
        ],
    );
    pinned("docker", &["--context", "remote", "run", "-i", &by_digest]);
    pinned("docker", &["container", "run", "-i", &by_digest]);
    pinned("podman", &["run", "-i", "--rm", "--pull=always", &by_digest]);
    pinned("podman", &["run", "--rootfs", "/srv/rootfs", "/bin/server"]);
    pinned("nerdctl", &["run", "-i", &by_digest]);

    unpinned("docker", &["run", "-i", "--rm", "mcp/fetch"], Problem::NoVersion);
    unpinned("docker", &["run", "-i", "--rm", "mcp/fetch:latest"], Problem::NotExact);
    unpinned("docker", &["run", "-i", "--rm", "mcp/fetch:main"], Problem::NotExact);
    unpinned("docker", &["run", "localhost:5000/mcp/fetch"], Problem::NoVersion);
    unpinned("docker", &["run", "mcp/fetch@sha256:abc"], Problem::NotExact);
    // The image is the first word that is not an option or its value.
    unpinned("docker", &["run", "-e", "mcp/fetch:1.0.0", "mcp/fetch"], Problem::NoVersion);
    unpinned("podman", &["run", "-i", "ghcr.io/o/img"], Problem::NoVersion);
    unpinned("docker", &["run", "-i"], Problem::NoPackage);
    unpinned("docker", &["run", "--frob", "x", "img:1.0"], Problem::UnknownOption("--frob".into()));
    // Not a container start: nothing fetched.
    assert_eq!(run("docker", &["exec", "-i", "running", "server"]), None);
    assert_eq!(run("docker", &["start", "-ai", "c"]), None);
}

#[test]
fn messages_say_what_and_how() {
    let m = run("npx", &["-y", "@scope/pkg"]).unwrap().problem().unwrap();
    assert!(m.contains("npx") && m.contains("`@scope/pkg`") && m.contains("`@scope/pkg@X.Y.Z`"), "{m}");
    let m = run("npx", &["@scope/pkg@^1"]).unwrap().problem().unwrap();
    assert!(m.contains("not an exact version") && m.contains("`@scope/pkg@X.Y.Z`"), "{m}");
    let m = run("uvx", &["tool>=1"]).unwrap().problem().unwrap();
    assert!(m.contains("`tool==X.Y.Z`"), "{m}");
    let m = run("pipx", &["run", "tool"]).unwrap().problem().unwrap();
    assert!(m.contains("`--spec tool==X.Y.Z`"), "{m}");
    let m = run("docker", &["run", "-i", "ghcr.io/o/img:latest"]).unwrap().problem().unwrap();
    assert!(m.contains("`ghcr.io/o/img@sha256:<digest>`"), "{m}");
    let m = run("npx", &["--mystery", "pkg"]).unwrap().problem().unwrap();
    assert!(m.contains("`--mystery=VALUE`"), "{m}");
    // A URL's credentials are never shown.
    let m = run("npx", &["git+https://user:hunter2@example.com/r.git"]).unwrap().problem().unwrap();
    assert!(!m.contains("hunter2") && m.contains("example.com"), "{m}");
    let m = run("uvx", &["--from", "tool @ git+https://tok3n@example.com/r@main", "t"]).unwrap().problem().unwrap();
    assert!(!m.contains("tok3n") && m.contains("example.com"), "{m}");
}

#[test]
fn semver_is_exact() {
    for v in
        ["0.0.0", "1.2.3", "10.20.30", "1.2.3-alpha", "1.2.3-alpha.1", "1.2.3+b", "1.2.3-rc.1+b.2", "v1.2.3", "=1.2.3"]
    {
        assert!(is_exact_semver(v), "{v}");
    }
    for v in [
        "", "1", "1.2", "1.2.x", "1.2.*", "^1.2.3", "~1.2.3", ">1.2.3", "1.2.3.4", "1.2.3-", "1.2.3 ", "latest", "1..3",
    ] {
        assert!(!is_exact_semver(v), "{v}");
    }
}
