//! Config parsing and validation (DESIGN.md invariant 9): every invalid field is reported with
//! its path and a fix, unknown fields are errors, and the defaults are the blueprint's.

use cutover_core::spec::{AbortSpec, Config, GateSpec, ScheduleKind};
use cutover_core::{Dur, Weight};

const MINIMAL: &str = r#"
[service]
name = "shop"
[app]
command = ["./app", "--port", "{port}"]
"#;

fn errors(text: &str) -> Vec<String> {
    Config::from_toml_str(text)
        .expect_err("config rejected")
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn example_config_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cutover.toml"
    ))
    .unwrap();
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.app.instances, 2);
    assert_eq!(
        c.rollout,
        Config::from_toml_str(MINIMAL).unwrap().rollout,
        "the example spells out the defaults"
    );
}

#[test]
fn defaults_are_the_blueprints() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    let r = &c.rollout;
    assert_eq!(r.schedule, ScheduleKind::Double);
    assert_eq!(r.initial(), Weight::from_bp(200).unwrap());
    assert_eq!(r.step_interval, Dur::from_secs(90));
    assert_eq!(r.interval, Dur::from_secs(5));
    assert_eq!(r.window, Dur::from_secs(30));
    assert_eq!(r.hold_previous, Dur::from_secs(3600));
    assert!(
        matches!(&r.gates[0], GateSpec::Latency { quantile, max_increase_percent: Some(p), .. } if *quantile == 0.99 && *p == 5.0)
    );
    assert!(
        matches!(&r.aborts[0], AbortSpec::Latency { above, for_, .. } if *above == Dur::from_millis(800) && *for_ == Dur::from_secs(45))
    );
    assert_eq!(c.admin.listen.ip().to_string(), "127.0.0.1");
}

#[test]
fn unknown_field_is_an_error_naming_its_path() {
    let e = errors(&format!("{MINIMAL}\n[rollout]\nstep_intervall = \"5s\"\n"));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("rollout"), "{}", e[0]);
    assert!(e[0].contains("unknown field `step_intervall`"), "{}", e[0]);
    assert!(e[0].contains("fix:"), "{}", e[0]);
    let e = errors(&format!("{MINIMAL}\n[[rollout.gates]]\nname = \"g\"\nmetric = \"latency\"\nmax_increase_percent = 5.0\nquantil = 0.9\n"));
    assert!(
        e[0].contains("rollout.gates[0]") && e[0].contains("quantil"),
        "{}",
        e[0]
    );
}

#[test]
fn type_errors_name_the_path_and_line() {
    let e = errors(&format!(
        "{MINIMAL}\n[rollout]\ninterval = \"five seconds\"\n"
    ));
    assert!(e[0].starts_with("rollout.interval"), "{}", e[0]);
    assert!(e[0].contains("\"90s\""), "{}", e[0]);
    assert!(e[0].contains("line"), "{}", e[0]);
    let e = errors("[service]\nname = \"x\"\n");
    assert!(e[0].contains("missing field `app`"), "{}", e[0]);
}

#[test]
fn every_invalid_value_is_reported_at_once_with_a_fix() {
    let text = r#"
[service]
name = "my shop!"
listen = "127.0.0.1:9000"
[admin]
listen = "127.0.0.1:9000"
[app]
command = ["./app"]
instances = 0
[app.readiness]
path = "ready"
failure_threshold = 0
[rollout]
initial_weight = 150
window = "1s"
interval = "5s"
steps = [{ weight = 5 }]
[[rollout.gates]]
name = "g"
metric = "latency"
quantile = 1.5
[[rollout.aborts]]
name = "g"
metric = "error_ratio"
above = 2.0
"#;
    let e = errors(text);
    let joined = e.join("\n");
    for path in [
        "service.name",
        "admin.listen",
        "app.command",
        "app.instances",
        "app.readiness.path",
        "app.readiness.failure_threshold",
        "rollout.initial_weight",
        "rollout.window",
        "rollout.steps",
        "rollout.gates[0].quantile",
        "rollout.gates[0]: has neither",
        "rollout.aborts[0].name",
        "rollout.aborts[0].above",
    ] {
        assert!(joined.contains(path), "missing {path} in:\n{joined}");
    }
    assert!(e.iter().all(|l| l.contains("(fix: ")), "{joined}");
}

#[test]
fn steps_must_not_go_backwards() {
    let e = errors(&format!("{MINIMAL}\n[rollout]\nschedule = \"steps\"\nsteps = [{{ weight = 20 }}, {{ weight = 10 }}]\n"));
    assert!(
        e[0].contains("rollout.steps[1].weight") && e[0].contains("only grow"),
        "{}",
        e[0]
    );
    let ok = Config::from_toml_str(&format!("{MINIMAL}\n[rollout]\nschedule = \"steps\"\nsteps = [{{ weight = 0.5 }}, {{ pause = \"until_promoted\" }}, {{ weight = 50, pause = \"2m\" }}]\n"));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn unknown_placeholders_are_rejected() {
    let e = errors("[service]\nname = \"s\"\n[app]\ncommand = [\"./app\", \"--port\", \"{port}\", \"{verison}\"]\n");
    assert!(e[0].contains("{verison}"), "{}", e[0]);
}

#[test]
fn drain_and_sticky_query_settings_are_checked() {
    let e = errors(&format!("{MINIMAL}\n[app.stop]\ndrain_path = \"drain\"\ndrain_signal = \"SIGUSR1\"\n[sticky]\nquery = \"a&b\"\n"));
    let joined = e.join("\n");
    assert!(
        joined.contains("app.stop.drain_path: \"drain\" does not start with '/'"),
        "{joined}"
    );
    assert!(
        joined.contains("together with app.stop.drain_signal"),
        "{joined}"
    );
    assert!(joined.contains("sticky.query"), "{joined}");
    let ok = Config::from_toml_str(&format!("{MINIMAL}\n[app.stop]\ndrain_path = \"/drain\"\nquiet_period = \"500ms\"\n[sticky]\nquery = \"client\"\n")).unwrap();
    assert_eq!(ok.app.stop.quiet_period, Dur::from_millis(500));
    assert_eq!(ok.sticky.query.as_deref(), Some("client"));
}

#[test]
fn proxy_workers_are_one_to_1024_or_one_per_cpu() {
    assert_eq!(
        Config::from_toml_str(MINIMAL).unwrap().service.workers,
        None
    );
    let with = |w: &str| {
        MINIMAL.replace(
            "name = \"shop\"",
            &format!("name = \"shop\"\nworkers = {w}"),
        )
    };
    assert_eq!(
        Config::from_toml_str(&with("4")).unwrap().service.workers,
        Some(4)
    );
    for bad in ["0", "1025"] {
        let e = errors(&with(bad)).join("\n");
        assert!(
            e.contains("service.workers") && e.contains("(fix: use 1 to 1024"),
            "{e}"
        );
    }
    let e = errors(&with("-1")).join("\n");
    assert!(e.contains("workers"), "{e}");
}

/// `service.trusted_proxies`: none by default; CIDRs and single addresses of both families;
/// a bad entry is refused naming its index and what to write.
#[test]
fn trusted_proxies_are_cidrs_and_none_by_default() {
    assert!(Config::from_toml_str(MINIMAL)
        .unwrap()
        .service
        .trusted_proxies
        .is_empty());
    let with = |list: &str| {
        MINIMAL.replace(
            "name = \"shop\"",
            &format!("name = \"shop\"\ntrusted_proxies = {list}"),
        )
    };
    let c = Config::from_toml_str(&with(r#"["10.0.0.0/8", "192.0.2.7", "fd00::/8"]"#)).unwrap();
    let listed: Vec<String> = c
        .service
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listed, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    for (bad, says) in [
        (
            r#"["10.0.0.0/8", "10.0.0.1/8"]"#,
            "write the network as \"10.0.0.0/8\"",
        ),
        (r#"["lb.internal"]"#, "is not an IP address range"),
        (r#"["::/200"]"#, "over 128"),
        ("\"10.0.0.0/8\"", "sequence"),
    ] {
        let e = errors(&with(bad)).join("\n");
        assert!(
            e.contains("service.trusted_proxies") && e.contains(says),
            "{bad}: {e}"
        );
    }
}
