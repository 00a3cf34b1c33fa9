//! Writing plugins: the README's walkthroughs from `hub plugin new` to a pushed plugin (run as
//! written, so they cannot rot), `hub plugin test` as a tool, and a Python scenario over NATS
//! beside the Rust plugins.

use crate::support::{Api, Env, json, next};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HUB: &str = env!("CARGO_BIN_EXE_hub");

/// The shell block of README.md after the marker `<!-- walkthrough: NAME -->`.
fn walkthrough(name: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    let marker = format!("<!-- walkthrough: {name} -->");
    let after = &readme[readme.find(&marker).unwrap_or_else(|| panic!("{marker} in the README")) + marker.len()..];
    let start = after.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let end = after[start..].find("```").expect("the block ends") + start;
    after[start..end].to_owned()
}

/// Run `script` with bash in `dir`, with this build's `hub` first on the PATH and the API of
/// the hub under test; panics with everything it printed when a command fails.
fn run_script(script: &str, dir: &Path, api: &str) -> Output {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let link = bin.join("hub");
    if !link.exists() {
        std::os::unix::fs::symlink(HUB, &link).expect("symlink hub");
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("HUB_API", api)
        .env_remove("HUB_ADMIN_TOKEN");
    // The outer build's settings are for this workspace, not for a project of its own.
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "CI",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("bash runs");
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn walk(name: &str, plugin: &str) {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = format!("http://{}", hub.http_addr());
    let dir = env.dir.path().to_owned();
    let script = walkthrough(name);
    let out = tokio::task::spawn_blocking(move || run_script(&script, &dir, &api))
        .await
        .expect("script ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("action offer.welcome → alice"), "{stdout}");

    // The pushed plugin is live with the walkthrough's config: a visitor who does not sign up
    // gets the offer once the wait passed.
    let (status, detail) = Api::new(&hub, None).get(&format!("/api/plugins/{plugin}")).await;
    assert_eq!(status, 200, "{detail}");
    let mut offers = env.sub("hub.actions.offer.welcome").await;
    for _ in 0..3 {
        env.send("page.viewed", "carol", json!({"page": "/"})).await;
    }
    let offer = json(&next(&mut offers, "offer.welcome", 10).await);
    assert_eq!(
        (offer["actor"].as_str(), offer["plugin"].as_str()),
        (Some("carol"), Some(plugin))
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_walkthrough_of_the_readme_runs_from_new_to_a_pushed_plugin() {
    walk("rust", "late-visitor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_walkthrough_of_the_readme_runs_from_new_to_a_pushed_plugin() {
    walk("python", "late-visitor-py").await;
}

fn example(file: &str) -> PathBuf {
    Path::new(hub::EXAMPLE_PLUGINS).join(file)
}

fn hub_cmd(args: &[&str], dir: &Path) -> Output {
    Command::new(HUB)
        .args(args)
        .current_dir(dir)
        .env_remove("CI")
        .output()
        .expect("hub runs")
}

#[test]
fn plugin_test_fails_with_a_diff_when_the_outputs_change_and_shows_bad_lines_as_dead_letters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    let failed = |id: &str, at: i64| {
        json!({"id": id, "kind": "payment.failed", "actor": "c1", "time": 1_796_000_000_000i64 + at, "payload": {"reason": "card_declined"}})
            .to_string()
    };
    let lines = [
        failed("f1", 0),
        failed("f2", 60_000),
        "{not json".into(),
        failed("f3", 120_000),
    ];
    std::fs::write(&events, lines.join("\n")).expect("write events");
    let wasm = example("payment_trouble.wasm");
    let wasm = wasm.to_str().expect("utf-8 path");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "test",
            wasm,
            "--events",
            "events.jsonl",
            "--expect",
            "expected.jsonl",
        ];
        args.extend_from_slice(extra);
        hub_cmd(&args, dir.path())
    };

    let missing = run(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--update"));

    let written = run(&["--update"]);
    assert!(written.status.success(), "{written:?}");
    let stdout = String::from_utf8_lossy(&written.stdout);
    assert!(stdout.contains("DEAD LETTER undecodable"), "{stdout}");
    assert!(
        stdout.contains("action support.callback → c1 [support 100]"),
        "{stdout}"
    );
    assert!(run(&[]).status.success(), "the same run matches what it wrote");

    // A higher threshold loses the callback: the diff names it, and the exit code says so.
    let changed = run(&["--config", r#"{"threshold": 4}"#]);
    assert!(!changed.status.success());
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with('-') && l.contains("support.callback")),
        "{stderr}"
    );
}

/// `plugins/payment-rescue` (Python) built once per test run by `hub plugin build`.
fn payment_rescue() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let project = repo("plugins/payment-rescue");
            let out = std::env::temp_dir().join(format!("hub-test-payment-rescue-{}.wasm", std::process::id()));
            let built = hub_cmd(
                &["plugin", "build", project.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")],
                &project,
            );
            assert!(
                built.status.success(),
                "hub plugin build plugins/payment-rescue failed (pip install -r plugin-sdk/python/requirements.txt?):\n{}{}",
                String::from_utf8_lossy(&built.stdout),
                String::from_utf8_lossy(&built.stderr)
            );
            out
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_scenario_runs_over_nats_beside_the_rust_plugins_and_is_hot_swapped() {
    let wasm = tokio::task::spawn_blocking(payment_rescue).await.expect("built");
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("payment-rescue".into(), json!({"grace": "1s"}));
    let dir = crate::support::plugin_folder(&env, "mixed", &[example("payment_trouble.wasm"), wasm.clone()]);
    config.plugins.dir = Some(dir);
    let hub = env.start(config).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let mut by_plugin = async |n: usize| {
        let mut seen = Vec::new();
        for _ in 0..n {
            let action = json(&next(&mut callbacks, "support.callback", 10).await);
            seen.push((action["plugin"].as_str().unwrap_or("").to_owned(), action));
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        seen
    };

    // Three failures: the Rust plugin calls back at once, the Python one after the grace period
    // in which the customer did not pay; with the profile's name and the gold tier's priority.
    env.send_raw("profiles.c1", br#"{"name": "Ann", "tier": "gold"}"#).await;
    for reason in ["card_declined", "insufficient_funds", "card_declined"] {
        env.send("payment.failed", "c1", json!({"reason": reason, "amount": 20.5}))
            .await;
    }
    let seen = by_plugin(2).await;
    assert_eq!(seen[0].0, "payment-rescue");
    assert_eq!(seen[1].0, "payment-trouble");
    let rescue = &seen[0].1;
    assert_eq!(rescue["actor"], "c1");
    assert_eq!(rescue["priority"], 150);
    assert_eq!(rescue["payload"]["failures"], 3);
    assert_eq!(rescue["payload"]["name"], "Ann");

    // Hot swap like any plugin: the same component, a lower threshold; two failures now do.
    let api = Api::new(&hub, None);
    let (status, body) = api
        .push(
            "payment-rescue",
            std::fs::read(&wasm).expect("wasm"),
            Some(r#"{"grace": "1s", "threshold": 2}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2, "{body}");
    for _ in 0..2 {
        env.send("payment.failed", "c2", json!({"reason": "expired"})).await;
    }
    let action = json(&next(&mut callbacks, "support.callback of version 2", 10).await);
    assert_eq!(
        (action["plugin"].as_str(), action["actor"].as_str()),
        (Some("payment-rescue"), Some("c2"))
    );
    assert_eq!(action["payload"]["failures"], 2);
    hub.shutdown().await;
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_python_sdk_and_the_python_scenario_pass_their_own_tests_under_cpython() {
    for (dir, sdk) in [
        ("plugin-sdk/python", "."),
        ("plugins/payment-rescue", "../../plugin-sdk/python"),
    ] {
        let out = Command::new("python3")
            // -B: no __pycache__ in the sources (the build watches them).
            .args(["-B", "-m", "unittest", "discover", "-s", "tests", "-t", "."])
            .current_dir(repo(dir))
            .env("PYTHONPATH", sdk)
            .output()
            .expect("python3 runs");
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dir}:\n{report}");
        // A skipped test would pass without componentize-py: here every test must run.
        assert!(!report.contains("skipped"), "{dir}:\n{report}");
    }
}

#[test]
fn the_python_scenario_gives_its_golden_outputs_on_the_hubs_runtime() {
    let wasm = payment_rescue();
    let out = hub_cmd(
        &[
            "plugin",
            "test",
            wasm.to_str().expect("utf-8"),
            "--events",
            "events.jsonl",
            "--profiles",
            "profiles.json",
            "--until",
            "+1h",
            "--expect",
            "expected.jsonl",
        ],
        &repo("plugins/payment-rescue"),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("action support.callback → c3 [support 150]"),
        "{stdout}"
    );
}
