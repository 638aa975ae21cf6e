//! The deployment files agree with each other and with the drain timeline.
//!
//! `.ci/check-deploy` validates the Dockerfile, the Kubernetes manifests and
//! the compose file against linters and schemas; a schema cannot see that a
//! probe points at the wrong port or that the grace period is shorter than the
//! drain. This test reads the same files (no network, no Docker) and checks:
//! ports and flags agree between drainproxy, the app, the probes and the
//! Service; `terminationGracePeriodSeconds`, `stop_grace_period`,
//! `--termination-grace-period`, the app's preStop sleep and the drain timeout
//! fit drain-delay + grace; the native sidecar really is one and drains from
//! its preStop; the image is what the manifests expect.
//!
//! `mutations_of_the_real_files_are_caught` changes one number or name in a real
//! file and expects a complaint, so a checker that accepts everything fails.
//! The `*_command_lines_run` tests start the real binary with each file's
//! command lines (addresses moved to free loopback ports): the flags parse, the
//! probes and the healthcheck answer, and the drain ends the way the platform
//! triggers it (SIGTERM, or the native sidecar's preStop hook) with exit 0.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use yaml_rust2::{Yaml, YamlLoader};

/// The placeholder image every manifest uses (one name, so a find-and-replace retargets them all).
const IMAGE: &str = "ghcr.io/example/drainproxy:latest";
/// drainproxy's own rule (`--termination-grace-period`): drain-delay + grace + 2 s must fit in the grace period.
const MARGIN: Duration = Duration::from_secs(2);

const SIDECAR: &str = "deploy/kubernetes/sidecar.yaml";
const NATIVE: &str = "deploy/kubernetes/native-sidecar.yaml";
const COMPOSE: &str = "deploy/compose/docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";

// ---------------------------------------------------------------- the tests

#[test]
fn every_kubernetes_manifest_holds_the_invariants() {
    let files = yaml_files("deploy/kubernetes");
    assert!(!files.is_empty(), "no manifest under deploy/kubernetes");
    for file in &files {
        if let Err(problems) = check_kubernetes(&read(file)) {
            panic!("{}:\n  {}", file.display(), problems.join("\n  "));
        }
    }
}

#[test]
fn both_sidecar_shapes_are_shipped() {
    assert_eq!(check_kubernetes(&read(SIDECAR)), Ok(Shape::Regular));
    assert_eq!(check_kubernetes(&read(NATIVE)), Ok(Shape::Native));
}

#[test]
fn every_compose_file_holds_the_invariants() {
    let files = yaml_files("deploy/compose");
    assert!(!files.is_empty(), "no compose file under deploy/compose");
    for file in &files {
        let problems = check_compose(&read(file));
        assert!(problems.is_empty(), "{}:\n  {}", file.display(), problems.join("\n  "));
    }
}

#[test]
fn dockerfile_holds_the_invariants() {
    if let Err(problems) = check_dockerfile(&read(DOCKERFILE)) {
        panic!("{DOCKERFILE}:\n  {}", problems.join("\n  "));
    }
}

/// Every binary a manifest or the compose file runs (`/usr/local/bin/...`) is one the image installs.
#[test]
fn manifests_run_only_binaries_the_image_has() {
    let installed = check_dockerfile(&read(DOCKERFILE)).expect("the Dockerfile is checked above");
    let mut files = yaml_files("deploy/kubernetes");
    files.extend(yaml_files("deploy/compose"));
    for file in files {
        let mut used = Vec::new();
        for doc in YamlLoader::load_from_str(&read(&file)).expect("parses") {
            scalars_under(&doc, "/usr/local/bin/", &mut used);
        }
        for path in used {
            let name = path.trim_start_matches("/usr/local/bin/");
            assert!(installed.contains(name), "{}: runs {path}, which the Dockerfile does not install", file.display());
        }
    }
}

#[test]
fn durations_parse_like_drainproxy_flags() {
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("5x").is_err());
}

/// (file, text to replace, replacement, a fragment of the complaint expected).
const MUTATIONS: &[(&str, &str, &str, &str)] = &[
    // Grace arithmetic.
    (SIDECAR, "- --grace=20s", "- --grace=40s", "terminationGracePeriodSeconds"),
    (SIDECAR, "- --drain-delay=5s", "- --drain-delay=1m", "terminationGracePeriodSeconds"),
    (SIDECAR, "terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 26", "+ 2s"),
    (SIDECAR, "--termination-grace-period=35s", "--termination-grace-period=30s", "--termination-grace-period"),
    (SIDECAR, "seconds: 27", "seconds: 20", "preStop sleep"),
    (SIDECAR, "seconds: 27", "seconds: 34", "time to stop"),
    (NATIVE, "- --grace=20s", "- --grace=30s", "terminationGracePeriodSeconds"),
    (NATIVE, "- --timeout=30s", "- --timeout=40s", "--timeout"),
    (NATIVE, "- --timeout=30s", "- --timeout=20s", "--timeout"),
    (COMPOSE, "stop_grace_period: 30s", "stop_grace_period: 10s", "stop_grace_period"),
    (COMPOSE, "- --grace=20s", "- --grace=1m", "stop_grace_period"),
    (COMPOSE, "- --termination-grace-period=30s", "- --termination-grace-period=25s", "--termination-grace-period"),
    // Ports and paths.
    (SIDECAR, "--listen=:8080", "--listen=:8081", "--listen"),
    (SIDECAR, "targetPort: http", "targetPort: admin", "targetPort"),
    (SIDECAR, "path: /readyz", "path: /healthz", "readinessProbe"),
    (SIDECAR, "path: /healthz", "path: /readyz", "livenessProbe"),
    (SIDECAR, "--admin=0.0.0.0:9901", "--admin=127.0.0.1:9901", "loopback"),
    (SIDECAR, "--admin=0.0.0.0:9901", "--admin=0.0.0.0:9902", "--admin port"),
    (SIDECAR, "--upstream=127.0.0.1:3000", "--upstream=127.0.0.1:3001", "--upstream"),
    (SIDECAR, "args: [--listen, 127.0.0.1:3000]", "args: [--listen, 127.0.0.1:4000]", "--upstream"),
    (NATIVE, "--admin=127.0.0.1:9901", "--admin=127.0.0.1:9902", "preStop"),
    (COMPOSE, "--upstream=app:3000", "--upstream=app:3001", "--upstream"),
    (COMPOSE, "--upstream=app:3000", "--upstream=ap:3000", "no service"),
    (COMPOSE, "\"8080:8080\"", "\"8080:8081\"", "publishes"),
    (COMPOSE, "--admin=127.0.0.1:9901\"]", "--admin=127.0.0.1:9902\"]", "healthcheck"),
    (COMPOSE, "\"0.0.0.0:3000\"", "\"127.0.0.1:3000\"", "loopback"),
    // Shapes.
    (NATIVE, "  restartPolicy: Always", "  restartPolicy: OnFailure", "restartPolicy"),
    (NATIVE, "\n                  - --wait", "", "--wait"),
    (NATIVE, "- drain\n", "- health\n", "drain"),
    (COMPOSE, "\"health\"", "\"drain\"", "healthcheck"),
    (SIDECAR, "app.kubernetes.io/name: demo-sidecar\n  ports:", "app.kubernetes.io/name: other\n  ports:", "selector"),
    (DOCKERFILE, "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGINT", "STOPSIGNAL"),
    (DOCKERFILE, "USER 65532:65532", "USER root", "USER"),
    (DOCKERFILE, "cargo build --release --locked", "cargo build --release", "--locked"),
    (DOCKERFILE, "EXPOSE 8080 9901", "EXPOSE 8080", "EXPOSE"),
    (DOCKERFILE, "FROM rust:1-bookworm", "FROM rust:latest", "tag"),
    (DOCKERFILE, "ENV DRAINPROXY_ADMIN=0.0.0.0:9901", "ENV DRAINPROXY_ADMIN=127.0.0.1:9901", "DRAINPROXY_ADMIN"),
];

#[test]
fn mutations_of_the_real_files_are_caught() {
    let mut missed = Vec::new();
    for &(file, from, to, expected) in MUTATIONS {
        let original = read(file);
        assert_eq!(original.matches(from).count(), 1, "{file}: {from:?} must occur exactly once to be mutated");
        let problems = check_any(file, &original.replacen(from, to, 1));
        if !problems.iter().any(|p| p.contains(expected)) {
            missed
                .push(format!("{file}: {from:?} -> {to:?}: expected a complaint about {expected:?}, got {problems:?}"));
        }
    }
    assert!(missed.is_empty(), "mutations not caught:\n  {}", missed.join("\n  "));
}

fn check_any(file: &str, src: &str) -> Vec<String> {
    match file {
        DOCKERFILE => check_dockerfile(src).err().unwrap_or_default(),
        COMPOSE => check_compose(src),
        _ => check_kubernetes(src).err().unwrap_or_default(),
    }
}

#[test]
fn sidecar_command_lines_run() {
    run_like_deployed(SIDECAR);
}

#[test]
fn native_sidecar_command_lines_run() {
    run_like_deployed(NATIVE);
}

#[test]
fn compose_command_lines_run() {
    run_like_deployed(COMPOSE);
}

// ---------------------------------------------------------------- running the command lines

/// The command lines a file gives drainproxy and the platform's calls into it.
#[derive(Default)]
struct Deployed {
    /// drainproxy's arguments (the image's ENTRYPOINT is the binary).
    args: Vec<String>,
    /// Kubernetes: the readiness and liveness probe paths on the admin port.
    probes: Option<(String, String)>,
    /// The native sidecar's preStop hook, a full command line.
    prestop: Option<Vec<String>>,
    /// compose: the healthcheck command line (without `CMD`).
    healthcheck: Option<Vec<String>>,
}

fn deployed(file: &str) -> Deployed {
    let docs = YamlLoader::load_from_str(&read(file)).expect("parses");
    if file == COMPOSE {
        let proxy = &docs[0]["services"]["proxy"];
        let test = strings(&proxy["healthcheck"]["test"]).expect("a healthcheck list");
        return Deployed {
            args: strings(&proxy["command"]).expect("a command list"),
            healthcheck: Some(test[1..].to_vec()),
            ..Deployed::default()
        };
    }
    let pod = docs.iter().find(|d| d["kind"].as_str() == Some("Deployment")).expect("a Deployment");
    let pod = &pod["spec"]["template"]["spec"];
    let all = [list(&pod["containers"]), list(&pod["initContainers"])].concat();
    let proxy = all.into_iter().find(|c| c["name"].as_str() == Some("drainproxy")).expect("a drainproxy container");
    let path = |probe: &str| proxy[probe]["httpGet"]["path"].as_str().expect("an httpGet probe").to_string();
    Deployed {
        args: strings(&proxy["args"]).expect("an args list"),
        probes: Some((path("readinessProbe"), path("livenessProbe"))),
        prestop: strings(&proxy["lifecycle"]["preStop"]["exec"]["command"]).ok(),
        healthcheck: None,
    }
}

/// Starts drainproxy as `file` deploys it, checks it is healthy and ready, then
/// drains it as the platform would and expects a clean exit.
fn run_like_deployed(file: &str) {
    let bin = env!("CARGO_BIN_EXE_drainproxy");
    let d = deployed(file);
    let admin = format!("127.0.0.1:{}", free_port());
    let admin_port: u16 = admin.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
    let args = with_flag(&with_flag(&d.args, "--listen", &format!("127.0.0.1:{}", free_port())), "--admin", &admin);
    // A command line from the file (the image's /usr/local/bin/drainproxy ...), run with
    // this build's binary and the admin address moved like the proxy's.
    let client = |line: &[String]| {
        let mut cmd = Command::new(bin);
        cmd.args(with_flag(&line[1..], "--admin", &admin)).env_clear().stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    let mut proxy = Running::spawn(Command::new(bin).args(&args).env_clear(), file);

    // Alive and ready, as the platform sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = match (&d.healthcheck, &d.probes) {
            (Some(check), _) => client(check).status().is_ok_and(|s| s.success()),
            (None, Some((ready, _))) => http_status(admin_port, ready) == Some(200),
            (None, None) => unreachable!("every file has probes or a healthcheck"),
        };
        if up {
            break;
        }
        assert!(
            proxy.0.try_wait().expect("waitable").is_none(),
            "{file}: drainproxy {args:?} exited: {}",
            proxy.stderr()
        );
        assert!(Instant::now() < deadline, "{file}: drainproxy {args:?} never became ready: {}", proxy.stderr());
        thread::sleep(Duration::from_millis(50));
    }
    if let Some((_, live)) = &d.probes {
        assert_eq!(http_status(admin_port, live), Some(200), "{file}: liveness {live} while serving");
    }

    // Drain: the native sidecar from its preStop hook, the others on SIGTERM.
    let hook = d.prestop.as_ref().map(|line| Running::spawn(&mut client(line), "the preStop hook"));
    if hook.is_none() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(proxy.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
    }
    let drain_delay = Flags(&args).duration("--drain-delay", "0s").expect("a duration");
    if let (Some((ready, live)), true) = (&d.probes, drain_delay >= Duration::from_secs(4)) {
        // Still accepting during the drain-delay: out of the Service, never killed by liveness.
        let deadline = Instant::now() + Duration::from_secs(3);
        while http_status(admin_port, ready) != Some(503) {
            assert!(Instant::now() < deadline, "{file}: readiness {ready} is not 503 once the drain started");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(http_status(admin_port, live), Some(200), "{file}: liveness {live} during the drain");
    }
    let within = drain_delay + Duration::from_secs(10);
    if let Some(mut hook) = hook {
        let status = hook.wait_within(within);
        assert!(status.success(), "{file}: the preStop hook failed ({status}): {}", hook.stderr());
    }
    let status = proxy.wait_within(within);
    assert!(status.success(), "{file}: drainproxy exited with {status} after the drain: {}", proxy.stderr());
}

/// `args` with `--name`'s value replaced (`--name=v` or `--name v`), or the flag added.
fn with_flag(args: &[String], name: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    let prefix = format!("{name}=");
    if let Some(i) = out.iter().position(|a| a.starts_with(&prefix)) {
        out[i] = format!("{name}={value}");
    } else if let Some(i) = out.iter().position(|a| a == name) {
        out[i + 1] = value.to_string();
    } else {
        out.push(format!("{name}={value}"));
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// The status of `GET path` on the loopback port, as a kubelet httpGet probe sends it.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).ok()?;
    status_line.split_whitespace().nth(1)?.parse().ok()
}

/// A child process that is killed if the test ends early.
struct Running(Child);

impl Running {
    fn spawn(cmd: &mut Command, what: &str) -> Self {
        Running(cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}")))
    }

    fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("waitable") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}: {}", self.stderr());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it printed on stderr so far (all of it once it has exited).
    fn stderr(&mut self) -> String {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        let mut text = String::new();
        if let Some(err) = self.0.stderr.as_mut() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- Kubernetes

#[derive(Debug, PartialEq)]
enum Shape {
    /// drainproxy is a regular container: SIGTERM at t=0 starts the drain.
    Regular,
    /// drainproxy is an init container with `restartPolicy: Always`: its preStop starts the drain.
    Native,
}

/// One file: a Deployment with a container named `drainproxy` and the app, and the Service(s) in front.
fn check_kubernetes(src: &str) -> Result<Shape, Vec<String>> {
    let mut p = Problems::default();
    match kubernetes(src, &mut p) {
        Ok(shape) if p.0.is_empty() => Ok(shape),
        Ok(_) => Err(p.0),
        Err(e) => Err([p.0, vec![e]].concat()),
    }
}

fn kubernetes(src: &str, p: &mut Problems) -> Result<Shape, String> {
    let docs = YamlLoader::load_from_str(src).map_err(|e| format!("not YAML: {e}"))?;
    let of_kind = |kind: &str| docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect::<Vec<_>>();
    let [deployment] = of_kind("Deployment")[..] else {
        return Err("expected exactly one Deployment".into());
    };
    let services = of_kind("Service");
    if services.is_empty() {
        return Err("no Service in front of the Deployment".into());
    }
    let template = &deployment["spec"]["template"];
    let labels = &template["metadata"]["labels"];
    p.check(selects(&deployment["spec"]["selector"]["matchLabels"], labels), || {
        "the Deployment's selector does not match its pod labels".into()
    });
    let pod = &template["spec"];
    let containers = list(&pod["containers"]);
    let inits = list(&pod["initContainers"]);
    let named = |c: &Yaml| c["name"].as_str() == Some("drainproxy");
    let (proxy, shape) = match (containers.iter().find(|c| named(c)), inits.iter().find(|c| named(c))) {
        (Some(c), None) => (*c, Shape::Regular),
        (None, Some(c)) => (*c, Shape::Native),
        _ => return Err("expected exactly one container named drainproxy".into()),
    };
    for c in containers.iter().chain(&inits) {
        p.check(c["image"].as_str() == Some(IMAGE), || {
            format!(
                "container {} uses image {:?}, not the placeholder {IMAGE}",
                c["name"].as_str().unwrap_or("?"),
                c["image"]
            )
        });
    }

    let args = strings(&proxy["args"]).map_err(|e| format!("drainproxy args: {e}"))?;
    let flags = Settings::from_flags(&Flags(&args))?;
    let tgps = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .ok_or("no terminationGracePeriodSeconds (the default, 30 s, is chosen for no drain in particular)")?;
    let drain = flags.drain_delay + flags.grace;
    p.check(drain + MARGIN <= tgps, || {
        format!(
            "terminationGracePeriodSeconds ({}s) < drain-delay ({:?}) + grace ({:?}) + 2s: the drain would be SIGKILLed",
            tgps.as_secs(),
            flags.drain_delay,
            flags.grace
        )
    });
    match flags.termination_grace_period {
        Some(t) => p.check(t == tgps, || {
            format!(
                "--termination-grace-period ({t:?}) differs from terminationGracePeriodSeconds ({}s)",
                tgps.as_secs()
            )
        }),
        None => {
            p.add("drainproxy has no --termination-grace-period, so it cannot warn about a short grace period".into())
        }
    }

    // drainproxy's own ports and probes.
    p.check(resolve_port(proxy, &Yaml::Integer(flags.listen.port.into())) == Some(flags.listen.port), || {
        format!("--listen port {} is not among drainproxy's containerPorts", flags.listen.port)
    });
    p.check(!flags.admin.is_loopback(), || {
        format!("--admin {} is loopback: the kubelet probes the pod IP, so probes would fail", flags.admin)
    });
    p.check(resolve_port(proxy, &Yaml::Integer(flags.admin.port.into())) == Some(flags.admin.port), || {
        format!("the --admin port {} is not among drainproxy's containerPorts", flags.admin.port)
    });
    for (probe, path, required) in
        [("readinessProbe", "/readyz", true), ("livenessProbe", "/healthz", true), ("startupProbe", "/healthz", false)]
    {
        let get = &proxy[probe]["httpGet"];
        if get.is_badvalue() {
            p.check(!required, || format!("drainproxy has no {probe} with httpGet"));
            continue;
        }
        p.check(get["path"].as_str() == Some(path), || format!("{probe} path is {:?}, expected {path}", get["path"]));
        p.check(resolve_port(proxy, &get["port"]) == Some(flags.admin.port), || {
            format!("{probe} port {:?} is not the --admin port {}", get["port"], flags.admin.port)
        });
    }

    // How the drain starts.
    if shape == Shape::Native {
        p.check(proxy["restartPolicy"].as_str() == Some("Always"), || {
            "drainproxy is an init container without restartPolicy: Always, so not a sidecar".into()
        });
        let hook = strings(&proxy["lifecycle"]["preStop"]["exec"]["command"])
            .map_err(|e| format!("the native sidecar needs a preStop exec running `drainproxy drain --wait`: {e}"))?;
        p.check(
            hook.first().is_some_and(|c| c.ends_with("/drainproxy"))
                && hook.get(1).map(String::as_str) == Some("drain"),
            || format!("the preStop hook {hook:?} does not run `drainproxy drain`"),
        );
        let hook_flags = Flags(hook.get(2..).unwrap_or_default());
        p.check(hook_flags.has("--wait"), || {
            "the preStop `drainproxy drain` has no --wait: the hook would return at once".into()
        });
        match hook_flags.value("--admin").map(Addr::parse) {
            Some(Ok(a)) => p.check(a.is_loopback() && a.port == flags.admin.port, || {
                format!(
                    "the preStop drains {a}, but POST /drain needs a loopback address on the --admin port {}",
                    flags.admin.port
                )
            }),
            Some(Err(e)) => p.add(format!("preStop --admin: {e}")),
            None => p.add("the preStop `drainproxy drain` has no --admin".into()),
        }
        let timeout = hook_flags.duration("--timeout", "60s")?;
        p.check(timeout >= drain && timeout < tgps, || {
            format!(
                "the preStop --timeout ({timeout:?}) must be >= drain-delay + grace ({drain:?}) and < terminationGracePeriodSeconds ({}s)",
                tgps.as_secs()
            )
        });
    }

    // The app: reached over loopback on the --upstream port, and alive until the drain is over.
    p.check(flags.upstream.is_loopback(), || {
        format!("--upstream {} is not loopback: the app is in the same pod", flags.upstream)
    });
    let app = containers
        .iter()
        .find(|c| !named(c) && listens_on(c, flags.upstream.port))
        .ok_or_else(|| format!("no app container listens on the --upstream port {}", flags.upstream.port))?;
    match prestop_sleep(app) {
        Some(sleep) => {
            p.check(sleep >= drain, || {
                format!("the app's preStop sleep ({sleep:?}) ends before drain-delay + grace ({drain:?}): it would stop while drainproxy still forwards to it")
            });
            p.check(sleep + MARGIN <= tgps, || {
                format!("the app's preStop sleep ({sleep:?}) leaves the app less than 2s of time to stop before terminationGracePeriodSeconds ({}s)", tgps.as_secs())
            });
        }
        None => p.add(
            "the app has no preStop sleep: it would get SIGTERM at t=0, while drainproxy still forwards to it".into(),
        ),
    }

    // Services send clients to drainproxy, never around it.
    for svc in services {
        let name = svc["metadata"]["name"].as_str().unwrap_or("?");
        p.check(selects(&svc["spec"]["selector"], labels), || {
            format!("Service {name}'s selector does not match the pod labels")
        });
        let ports = list(&svc["spec"]["ports"]);
        p.check(!ports.is_empty(), || format!("Service {name} has no ports"));
        for port in ports {
            let target = if port["targetPort"].is_badvalue() { &port["port"] } else { &port["targetPort"] };
            p.check(resolve_port(proxy, target) == Some(flags.listen.port), || {
                format!("Service {name} targetPort {target:?} is not drainproxy's --listen port {}", flags.listen.port)
            });
        }
    }
    Ok(shape)
}

/// A named or numbered port of `container`, as a probe or a Service's targetPort names it.
fn resolve_port(container: &Yaml, port: &Yaml) -> Option<u16> {
    let declared = list(&container["ports"]);
    let number = |p: &Yaml| p["containerPort"].as_i64().and_then(|n| u16::try_from(n).ok());
    match port {
        Yaml::Integer(n) => declared.iter().filter_map(|p| number(p)).find(|&d| i64::from(d) == *n),
        Yaml::String(name) => declared.iter().find(|p| p["name"].as_str() == Some(name)).and_then(|p| number(p)),
        _ => None,
    }
}

/// Whether the container serves on `port`: its own `--listen` flag or a declared containerPort.
fn listens_on(container: &Yaml, port: u16) -> bool {
    let args = [strings(&container["command"]), strings(&container["args"])]
        .into_iter()
        .flatten()
        .flatten()
        .collect::<Vec<_>>();
    let by_flag = Flags(&args).value("--listen").and_then(|a| Addr::parse(a).ok()).is_some_and(|a| a.port == port);
    by_flag || resolve_port(container, &Yaml::Integer(port.into())).is_some()
}

/// The app's preStop delay: the `sleep` action, or an exec of `sleep N`.
fn prestop_sleep(container: &Yaml) -> Option<Duration> {
    let hook = &container["lifecycle"]["preStop"];
    if let Some(s) = hook["sleep"]["seconds"].as_i64() {
        return u64::try_from(s).ok().map(Duration::from_secs);
    }
    let command = strings(&hook["exec"]["command"]).ok()?.join(" ");
    let seconds = command.split_whitespace().skip_while(|w| !w.ends_with("sleep")).nth(1)?;
    seconds.parse().ok().map(Duration::from_secs)
}

/// Every key of `selector` is in `labels` with the same value (and there is at least one).
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    selector.as_hash().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k.as_str().unwrap_or("")] == *v))
}

// ---------------------------------------------------------------- compose

fn check_compose(src: &str) -> Vec<String> {
    let mut p = Problems::default();
    if let Err(e) = compose(src, &mut p) {
        p.add(e);
    }
    p.0
}

fn compose(src: &str, p: &mut Problems) -> Result<(), String> {
    let docs = YamlLoader::load_from_str(src).map_err(|e| format!("not YAML: {e}"))?;
    let [doc] = &docs[..] else { return Err("expected one YAML document".into()) };
    let services = doc["services"].as_hash().ok_or("no services")?;
    for (name, svc) in services {
        p.check(svc["image"].as_str() == Some(IMAGE), || {
            format!(
                "service {} uses image {:?}, not the placeholder {IMAGE}",
                name.as_str().unwrap_or("?"),
                svc["image"]
            )
        });
    }
    let proxy = &doc["services"]["proxy"];
    let all_args = strings(&proxy["command"]).map_err(|e| format!("service proxy: command: {e}"))?;
    // Supervisor mode: drainproxy's own flags, then `--`, then the app's command line.
    let split = all_args.iter().position(|a| a == "--").unwrap_or(all_args.len());
    let (args, app_command) = (&all_args[..split], all_args.get(split + 1..).unwrap_or_default());
    let flags = Settings::from_flags(&Flags(args))?;
    // In supervisor mode the app is stopped only after the drain, within --app-grace.
    let app_grace = if app_command.is_empty() { Duration::ZERO } else { Flags(args).duration("--app-grace", "10s")? };
    let drain = flags.drain_delay + flags.grace + app_grace;

    // Grace arithmetic: compose SIGKILLs after stop_grace_period (default 10 s).
    let stop = parse_duration(proxy["stop_grace_period"].as_str().ok_or("service proxy has no stop_grace_period")?)?;
    p.check(drain + MARGIN <= stop, || {
        format!(
            "stop_grace_period ({stop:?}) < drain-delay ({:?}) + grace ({:?}) + 2s: the drain would be SIGKILLed",
            flags.drain_delay, flags.grace
        )
    });
    match flags.termination_grace_period {
        Some(t) => p.check(t == stop, || {
            format!("--termination-grace-period ({t:?}) differs from stop_grace_period ({stop:?})")
        }),
        None => p.add(
            "the proxy has no --termination-grace-period, so it cannot warn about a short stop_grace_period".into(),
        ),
    }
    if let Some(signal) = proxy["stop_signal"].as_str() {
        p.check(signal == "SIGTERM", || format!("stop_signal is {signal}, drainproxy drains on SIGTERM"));
    }

    // Clients reach the proxy's --listen port.
    let published: Vec<u16> = list(&proxy["ports"])
        .into_iter()
        .filter_map(|port| match port {
            Yaml::String(s) => s.rsplit(':').next().and_then(|c| c.split('/').next()?.parse().ok()),
            Yaml::Integer(n) => u16::try_from(*n).ok(),
            long => long["target"].as_i64().and_then(|n| u16::try_from(n).ok()),
        })
        .collect();
    p.check(published.into_iter().any(|c| c == flags.listen.port), || {
        format!("no entry of ports publishes the --listen port {}", flags.listen.port)
    });

    // Supervisor mode: the app is drainproxy's child, on loopback in the same container.
    if !app_command.is_empty() {
        p.check(flags.upstream.is_loopback(), || {
            format!("supervisor mode, but --upstream {} is not loopback", flags.upstream)
        });
        match Flags(app_command).value("--listen").map(Addr::parse) {
            Some(Ok(a)) => p.check(a.port == flags.upstream.port, || {
                format!("--upstream {} but the supervised app listens on {a}", flags.upstream)
            }),
            _ => p.add("the supervised app has no --listen address".into()),
        }
    }
    // Otherwise the app is another service, reachable across containers, stopped after the proxy.
    let app_name = flags.upstream.host.as_str();
    let app = &doc["services"][app_name];
    if !app_command.is_empty() {
    } else if app.is_badvalue() {
        p.add(format!("--upstream {} names no service", flags.upstream));
    } else {
        let app_args = strings(&app["command"]).map_err(|e| format!("service {app_name}: command: {e}"))?;
        match Flags(&app_args).value("--listen").map(Addr::parse) {
            Some(Ok(a)) => {
                p.check(a.port == flags.upstream.port, || {
                    format!("--upstream {} but {app_name} listens on {a}", flags.upstream)
                });
                p.check(!a.is_loopback(), || {
                    format!("{app_name} listens on loopback {a}: the proxy container cannot reach it")
                });
            }
            _ => p.add(format!("service {app_name} has no --listen address in its command")),
        }
        let depends = &proxy["depends_on"];
        let on_app = list(depends).iter().any(|d| d.as_str() == Some(app_name)) || !depends[app_name].is_badvalue();
        p.check(on_app, || format!("the proxy does not depend_on {app_name}, so compose may stop the app first"));
    }

    // The healthcheck: a distroless image has no curl, drainproxy checks itself.
    let test = strings(&proxy["healthcheck"]["test"]).map_err(|e| format!("proxy healthcheck test: {e}"))?;
    p.check(
        test.first().map(String::as_str) == Some("CMD")
            && test.get(1).is_some_and(|b| b.ends_with("/drainproxy"))
            && test.get(2).map(String::as_str) == Some("health"),
        || format!("the healthcheck {test:?} should be [CMD, /usr/local/bin/drainproxy, health, ...]; `drain` would stop the proxy"),
    );
    match Flags(test.get(3..).unwrap_or_default()).value("--admin").map(Addr::parse) {
        Some(Ok(a)) => p.check(a.port == flags.admin.port, || {
            format!("the healthcheck asks {a}, not the --admin port {}", flags.admin.port)
        }),
        _ => p.add("the healthcheck has no --admin address".into()),
    }
    Ok(())
}

// ---------------------------------------------------------------- Dockerfile

/// Checks the image recipe; returns the binaries it installs in /usr/local/bin.
fn check_dockerfile(src: &str) -> Result<BTreeSet<String>, Vec<String>> {
    let mut p = Problems::default();
    let instructions = dockerfile_instructions(src);
    let froms: Vec<usize> = instructions.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    p.check(froms.len() >= 2, || "not multi-stage: the final image would carry the Rust toolchain".into());
    for &i in &froms {
        let image = instructions[i].1.split_whitespace().find(|w| !w.starts_with("--")).unwrap_or("");
        let tagged = image.contains('@') || image.rsplit('/').next().is_some_and(|n| n.contains(':'));
        p.check(tagged && !image.ends_with(":latest"), || {
            format!("FROM {image}: base images need a tag other than latest")
        });
    }
    p.check(
        instructions.iter().any(|(k, rest)| {
            k == "RUN" && rest.contains("cargo build") && rest.contains("--release") && rest.contains("--locked")
        }),
        || "no RUN cargo build --release --locked: the image must build from Cargo.lock".into(),
    );

    let last = froms.last().copied().unwrap_or(0);
    let last_stage = &instructions[last..];
    let find = |key: &str| last_stage.iter().rev().find(|(k, _)| k == key).map(|(_, rest)| rest.trim());
    let user = find("USER").unwrap_or("");
    let uid = user.split(':').next().unwrap_or("");
    p.check(!uid.is_empty() && uid != "0" && uid.parse::<u32>().is_ok(), || {
        format!("final USER {user:?}: must be a numeric non-root uid (so runAsNonRoot can verify it)")
    });
    p.check(find("STOPSIGNAL") == Some("SIGTERM"), || {
        "final stage: STOPSIGNAL must be SIGTERM, the signal that drains".into()
    });
    let exposed: BTreeSet<&str> =
        last_stage.iter().filter(|(k, _)| k == "EXPOSE").flat_map(|(_, r)| r.split_whitespace()).collect();
    p.check(exposed.contains("8080") && exposed.contains("9901"), || {
        format!("EXPOSE {exposed:?}: must expose the proxy (8080) and admin (9901) ports")
    });
    let entrypoint: String = find("ENTRYPOINT").unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
    p.check(entrypoint == r#"["/usr/local/bin/drainproxy"]"#, || {
        format!("ENTRYPOINT {entrypoint}: must be exec-form [\"/usr/local/bin/drainproxy\"] (a shell form would not forward SIGTERM)")
    });
    let admin = last_stage
        .iter()
        .filter(|(k, _)| k == "ENV")
        .find_map(|(_, rest)| rest.trim().strip_prefix("DRAINPROXY_ADMIN=").map(|v| v.trim_matches('"')));
    match admin.map(Addr::parse) {
        Some(Ok(a)) => p.check(!a.is_loopback() && exposed.contains(a.port.to_string().as_str()), || {
            format!("DRAINPROXY_ADMIN={a}: probes from outside the container need all interfaces on an exposed port")
        }),
        _ => p.add(
            "the final stage sets no DRAINPROXY_ADMIN: the admin port would be loopback-only, out of the probes' reach"
                .into(),
        ),
    }

    let mut installed = BTreeSet::new();
    for (_, rest) in last_stage.iter().filter(|(k, _)| k == "COPY") {
        let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        if let [sources @ .., "/usr/local/bin/"] = &words[..] {
            installed.extend(sources.iter().map(|s| s.rsplit('/').next().unwrap_or(s).to_string()));
        }
    }
    for binary in ["drainproxy", "demo-upstream"] {
        p.check(installed.contains(binary), || format!("the final stage does not copy {binary} to /usr/local/bin/"));
    }
    if p.0.is_empty() {
        Ok(installed)
    } else {
        Err(p.0)
    }
}

/// (KEYWORD, rest) per instruction, with continuation lines joined and comments dropped.
fn dockerfile_instructions(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in src.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

// ---------------------------------------------------------------- flags, addresses, durations

/// drainproxy's settings as given on a command line, with the binary's defaults.
struct Settings {
    listen: Addr,
    upstream: Addr,
    admin: Addr,
    grace: Duration,
    drain_delay: Duration,
    termination_grace_period: Option<Duration>,
}

impl Settings {
    fn from_flags(flags: &Flags) -> Result<Self, String> {
        let addr = |name: &str, default: Option<&str>| -> Result<Addr, String> {
            let value = flags.value(name).or(default).ok_or_else(|| format!("drainproxy has no {name}"))?;
            Addr::parse(value).map_err(|e| format!("{name}: {e}"))
        };
        Ok(Settings {
            listen: addr("--listen", Some(":8080"))?,
            upstream: addr("--upstream", None)?,
            admin: addr("--admin", Some("127.0.0.1:9901"))?,
            grace: flags.duration("--grace", "5s")?,
            drain_delay: flags.duration("--drain-delay", "0s")?,
            termination_grace_period: flags.value("--termination-grace-period").map(parse_duration).transpose()?,
        })
    }
}

/// A command line's flags, as `--name value` or `--name=value`.
struct Flags<'a>(&'a [String]);

impl Flags<'_> {
    fn value(&self, name: &str) -> Option<&str> {
        let mut args = self.0.iter();
        while let Some(arg) = args.next() {
            if arg == name {
                return args.next().map(String::as_str);
            }
            if let Some(value) = arg.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
                return Some(value);
            }
        }
        None
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn duration(&self, name: &str, default: &str) -> Result<Duration, String> {
        parse_duration(self.value(name).unwrap_or(default)).map_err(|e| format!("{name}: {e}"))
    }
}

/// `host:port` as drainproxy takes it (`:8080` = all interfaces, `http://` allowed for the upstream).
#[derive(Debug)]
struct Addr {
    host: String,
    port: u16,
}

impl Addr {
    fn parse(s: &str) -> Result<Self, String> {
        let bare = s.strip_prefix("http://").unwrap_or(s);
        let (host, port) = bare.rsplit_once(':').ok_or_else(|| format!("{s:?} has no port"))?;
        let port = port.parse().map_err(|_| format!("{s:?} has no valid port"))?;
        Ok(Addr { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port })
    }

    fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host == "::1" || self.host.starts_with("127.")
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `5s`, `500ms`, `1m30s`, `1h`: a sequence of number+unit, as the flags and compose write them.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 5s, 500ms or 1m30s");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let tail = &rest[digits..];
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        total += match &tail[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
        rest = &tail[unit_len..];
    }
    Ok(total)
}

// ---------------------------------------------------------------- helpers

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn add(&mut self, problem: String) {
        self.0.push(problem);
    }
}

fn list(y: &Yaml) -> Vec<&Yaml> {
    y.as_vec().map(|v| v.iter().collect()).unwrap_or_default()
}

/// A YAML list of scalars as strings (a command line).
fn strings(y: &Yaml) -> Result<Vec<String>, String> {
    let items = y.as_vec().ok_or("expected a list")?;
    items
        .iter()
        .map(|item| match item {
            Yaml::String(s) | Yaml::Real(s) => Ok(s.clone()),
            Yaml::Integer(n) => Ok(n.to_string()),
            other => Err(format!("expected a scalar, got {other:?}")),
        })
        .collect()
}

/// Every string scalar under `y` that starts with `prefix`.
fn scalars_under(y: &Yaml, prefix: &str, out: &mut Vec<String>) {
    match y {
        Yaml::String(s) if s.starts_with(prefix) => out.push(s.clone()),
        Yaml::Array(items) => items.iter().for_each(|i| scalars_under(i, prefix, out)),
        Yaml::Hash(map) => map.values().for_each(|v| scalars_under(v, prefix, out)),
        _ => {}
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let rel = rel.as_ref();
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| Path::new(dir).join(p.file_name().expect("a file")))
        .collect();
    files.sort();
    files
}
