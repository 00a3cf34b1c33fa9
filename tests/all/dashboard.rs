//! The dashboard in a real browser: headless Chromium loads `/` from a hub with events flowing.
//! The page loads without a console error or an uncaught exception, its figures move as events
//! arrive, a dead letter opens on a click, a rollback clicked on the page takes effect in the hub,
//! a shadow's running difference shows and promoting it from the page takes effect, and a
//! screenshot of it is kept as an artifact of the run (`target/test-artifacts/dashboard.png`;
//! a tenant's own page: `dashboard-tenant.png`).
//!
//! Chromium is Debian's `/usr/bin/chromium`, driven over the DevTools protocol. Its calls block,
//! so they run under `block_in_place`, beside the hub and the traffic on the same runtime.

use crate::support::{Api, Env, http_get, shoes};
use headless_chrome::browser::tab::Tab;
use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Log::LogEntryLevel;
use headless_chrome::protocol::cdp::Page::{AddScriptToEvaluateOnNewDocument, CaptureScreenshotFormatOption};
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::{Browser, LaunchOptions};
use serde_json::{Value, json};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The viewport: wide enough for the page's two-column layout.
const WINDOW: (u32, u32) = (1440, 1300);
const PLUGIN: &str = "cart-abandonment";
/// The plugin with a shadow, promoted from the page.
const SHADOWED: &str = "payment-trouble";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_hub_live_rolls_back_and_promotes_a_shadow_in_a_browser() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);

    // A second version to roll back from: the same module with a shorter window.
    let wasm = std::fs::read(Path::new(hub::EXAMPLE_PLUGINS).join("cart_abandonment.wasm")).expect("plugin built");
    let (status, change) = api.push(PLUGIN, wasm, Some(r#"{"window": "10m"}"#)).await;
    assert_eq!((status, change["version"].as_u64()), (200, Some(2)), "{change}");
    // A shadow beside payment-trouble, calling back at the second failure instead of the third.
    let trouble = std::fs::read(Path::new(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm")).expect("plugin built");
    let (status, change) = api
        .push_query(
            SHADOWED,
            trouble,
            &[("config", r#"{"threshold": 2}"#), ("shadow", "true")],
        )
        .await;
    assert_eq!((status, change["shadow"].as_u64()), (200, Some(2)), "{change}");

    // The page itself comes from the hub, as HTML.
    let index = http_get(hub.http_addr(), "/").await;
    assert!(
        index.starts_with("HTTP/1.1 200") && index.contains("text/html"),
        "the hub serves no dashboard at / (is dashboard::router() merged in http.rs?): {}",
        index.lines().next().unwrap_or_default()
    );

    let traffic = tokio::spawn(traffic(env.client.clone()));
    let page = block_in_place(|| {
        Page::open(
            &env.dir.path().join("chromium"),
            &format!("http://{}/", hub.http_addr()),
        )
    });

    // Live: the stream is up, and the figures follow the events.
    block_in_place(|| {
        page.wait_until(
            "the live stream is up",
            "document.getElementById('connection').textContent === 'live'",
        );
        let first = page.wait_for_number(
            "events in, total",
            "document.getElementById('total-events-in').dataset.value",
            |n| n > 0,
        );
        page.wait_for_number(
            "events in, total",
            "document.getElementById('total-events-in').dataset.value",
            |n| n > first,
        );
        page.wait_until(
            "the rate of events in",
            "Number(document.getElementById('fig-events-in').textContent.replace(/,/g, '')) > 0",
        );
        page.wait_until("plugin rows", &format!("{} !== null", row_cell(PLUGIN, 2)));
        page.wait_until(
            &format!("{PLUGIN} at v2"),
            &format!("{}.textContent === 'v2'", row_cell(PLUGIN, 2)),
        );
        page.wait_until(
            "calls counted on the page",
            &format!(
                "Number({}.textContent.replace(/,/g, '')) > 0",
                row_cell("clickstream", 4)
            ),
        );
        page.wait_until(
            "the shadow's running difference",
            &format!("/shadow v2: \\+[1-9]/.test({}.textContent)", row_cell(SHADOWED, 3)),
        );
        page.wait_until(
            "a dead letter listed",
            "document.querySelectorAll('#letters tbody tr').length > 0",
        );
        page.wait_until(
            "points on the rate chart",
            "document.querySelectorAll('#chart-rates canvas').length === 1",
        );
    });

    // A dead letter opens whole on a click: the message that could not be read is there.
    block_in_place(|| {
        page.click("#letters tbody tr:first-child td:first-child");
        page.wait_until(
            "a dead letter's body",
            "document.getElementById('letter-dialog').open \
             && document.getElementById('letter-body').textContent === '{not json'",
        );
        page.click("#letter-dialog [data-close]");
        page.wait_until("the letter closed", "!document.getElementById('letter-dialog').open");
    });

    // Roll back from the page: its button, then the confirmation.
    block_in_place(|| {
        page.click(&format!(
            "#plugins tr[data-plugin=\"{PLUGIN}\"] button[data-action=\"rollback\"]"
        ));
        page.wait_until("the confirmation", "document.getElementById('confirm-dialog').open");
        page.click("#confirm-ok");
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, detail) = api.get(&format!("/api/plugins/{PLUGIN}")).await;
        assert_eq!(status, 200, "{detail}");
        if detail["active_version"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback clicked on the page did not take effect: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    block_in_place(|| {
        page.wait_until(
            &format!("{PLUGIN} at v1 on the page"),
            &format!("{}.textContent === 'v1'", row_cell(PLUGIN, 2)),
        );
        page.wait_until(
            "the rollback told on the status line",
            "document.getElementById('status-line').textContent.includes('rolled back to v1')",
        );
    });

    // Promote the shadow from the page.
    block_in_place(|| {
        page.click(&format!(
            "#plugins tr[data-plugin=\"{SHADOWED}\"] button[data-action=\"promote\"]"
        ));
        page.wait_until("the confirmation", "document.getElementById('confirm-dialog').open");
        page.click("#confirm-ok");
        page.wait_until(
            &format!("{SHADOWED} at v2 on the page, its shadow gone"),
            &format!(
                "{}.textContent === 'v2' && !{}.textContent.includes('shadow')",
                row_cell(SHADOWED, 2),
                row_cell(SHADOWED, 3)
            ),
        );
    });
    let (_, detail) = api.get(&format!("/api/plugins/{SHADOWED}")).await;
    assert_eq!(detail["active_version"], 2, "{detail}");

    let shot = block_in_place(|| page.screenshot("dashboard.png"));
    println!("dashboard screenshot: {}", shot.display());
    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page reported errors:\n{}",
        problems.join("\n")
    );
    let line = block_in_place(|| {
        page.eval("document.getElementById('status-line').className + ' ' + document.getElementById('status-line').textContent")
    });
    assert!(
        !line.as_str().unwrap_or_default().starts_with("status-line error"),
        "the status line tells of an error: {line}"
    );
    traffic.abort();
    hub.shutdown().await;
}

/// A tenant's own token gets a page of its own: its figures, the plugin that runs for it alone
/// and its dead letters, nothing of the hub's or of another tenant, and no call refused on the
/// way (a refused call is a console error the page would report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_token_opens_a_dashboard_of_its_own_figures_plugins_and_dead_letters() {
    let env = Env::new().await;
    let hub = env.start(crate::tenants::with_tokens(&env)).await;
    let acme = Api::new(&hub, Some("acme-t"));
    let wasm = std::fs::read(Path::new(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm")).expect("plugin built");
    let (status, change) = acme.push("acme-trouble", wasm, None).await;
    assert_eq!(status, 200, "{change}");
    for n in 0..5 {
        let failure = json!({"kind": "payment.failed", "actor": format!("c{n}"), "payload": {"amount": 1}});
        env.send_raw("tenant.acme.events.payment.failed", failure.to_string().as_bytes())
            .await;
    }
    env.send_raw("tenant.acme.events.order.placed", b"{not json").await;
    env.send_raw("tenant.globex.events.order.placed", b"{not json either")
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, figures) = acme.get("/api/tenants/acme").await;
        if status == 200 && figures["events_in"].as_u64() >= Some(5) && figures["dead_letters"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acme's inputs were not counted: {status} {figures}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The token is in the tab's storage before the page's scripts run, as after a reload.
    let page = block_in_place(|| {
        let page = Page::launch(&env.dir.path().join("chromium"));
        page.before_each_load("sessionStorage.setItem('hub.adminToken', 'acme-t')");
        page.go(&format!("http://{}/", hub.http_addr()));
        page
    });
    block_in_place(|| {
        page.wait_until(
            "the tenant's own view",
            "document.getElementById('scope').textContent === 'tenant acme' \
             && document.getElementById('connection').textContent === 'live'",
        );
        page.wait_for_number(
            "acme's events in, total",
            "document.getElementById('total-events-in').dataset.value",
            |n| n >= 5,
        );
        page.wait_until(
            "acme's row alone among the tenants",
            "document.querySelectorAll('#tenants tbody tr').length === 1 \
             && document.querySelector('#tenants tbody td').textContent === 'acme'",
        );
        page.wait_until(
            "acme's own plugin, alone",
            "document.querySelectorAll('#plugins tbody tr').length === 1 \
             && document.querySelector('#plugins tr[data-plugin=\"acme-trouble\"]') !== null",
        );
        page.wait_until(
            "acme's dead letter, not globex's",
            "document.querySelectorAll('#letters tbody tr').length === 1 \
             && document.querySelectorAll('#letter-reasons tbody tr').length === 1",
        );
        page.click("#letters tbody tr:first-child td:first-child");
        page.wait_until(
            "acme's dead letter's body",
            "document.getElementById('letter-dialog').open \
             && document.getElementById('letter-body').textContent === '{not json'",
        );
        page.click("#letter-dialog [data-close]");
        for panel in ["shards", "decisions", "chart-latency", "fig-p50"] {
            assert_eq!(
                page.eval(&format!("document.getElementById('{panel}').offsetParent === null")),
                Value::Bool(true),
                "the hub's own {panel} shows on a tenant's page"
            );
        }
    });
    let shot = block_in_place(|| page.screenshot("dashboard-tenant.png"));
    println!("a tenant's dashboard: {}", shot.display());
    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page reported errors:\n{}",
        problems.join("\n")
    );
    hub.shutdown().await;
}

/// The JS for a cell of a plugin's row (1-based column), or `null`.
fn row_cell(plugin: &str, column: usize) -> String {
    format!("document.querySelector('#plugins tr[data-plugin=\"{plugin}\"] td:nth-child({column})')")
}

/// Events for the example plugins, 50 a second until aborted: page views and carts for the
/// clickstream, payment failures (a customer's third within ten minutes becomes an action), and
/// now and then a message that is not JSON, for the dead letters.
async fn traffic(client: async_nats::Client) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 0u64.. {
        tick.tick().await;
        let visitor = format!("visitor-{}", n % 40);
        let (subject, body) = match n % 10 {
            0..=5 => (
                "web.page_view",
                json!({"visitor": visitor, "url": "/shoes/a1", "product": {"sku": "A1", "name": "Shoes", "price": 59.9}})
                    .to_string(),
            ),
            6 | 7 => ("web.add_to_cart", shoes(&visitor).to_string()),
            8 => (
                "events.payment.failed",
                json!({"kind": "payment.failed", "actor": format!("customer-{}", n % 7), "payload": {"reason": "card_declined", "amount": 42.0}})
                    .to_string(),
            ),
            _ if n % 50 == 9 => ("events.order.placed", "{not json".to_owned()),
            _ => ("web.click", json!({"visitor": visitor, "url": "/"}).to_string()),
        };
        client.publish(subject, body.into()).await.expect("publish");
    }
}

/// A Chromium tab on the dashboard, and what it reported as going wrong.
struct Page {
    // Kept for the tab's life: dropping it ends Chromium.
    _browser: Browser,
    tab: Arc<Tab>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl Page {
    fn open(profile: &Path, url: &str) -> Page {
        let page = Page::launch(profile);
        page.go(url);
        page
    }

    /// Run `script` in every page the tab loads, before the page's own scripts.
    fn before_each_load(&self, script: &str) {
        self.tab
            .call_method(AddScriptToEvaluateOnNewDocument {
                source: script.to_owned(),
                world_name: None,
                include_command_line_api: None,
                run_immediately: None,
            })
            .expect("a script for each load");
    }

    /// Chromium with one tab, on no page yet.
    fn launch(profile: &Path) -> Page {
        assert!(
            Path::new(CHROMIUM).exists(),
            "the dashboard test drives Chromium: install Debian's chromium package ({CHROMIUM})"
        );
        std::fs::create_dir_all(profile).expect("profile folder");
        // headless, sandbox and enable_gpu give --headless, --no-sandbox and --disable-gpu. The
        // rest keep Chromium from reaching out (updates, sync, QUIC): there is no network here.
        let quiet = [
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let options = LaunchOptions::default_builder()
            .path(Some(PathBuf::from(CHROMIUM)))
            .headless(true)
            .sandbox(false)
            .enable_gpu(false)
            .user_data_dir(Some(profile.to_path_buf()))
            .window_size(Some(WINDOW))
            .idle_browser_timeout(Duration::from_secs(120))
            .args(quiet.iter().map(OsStr::new).collect())
            .build()
            .expect("launch options");
        let browser = Browser::new(options).expect("Chromium starts");
        let tab = browser.new_tab().expect("a tab");
        tab.set_default_timeout(Duration::from_secs(15));

        // Listen before the page loads, so that nothing it reports is missed.
        let problems = Arc::new(Mutex::new(Vec::new()));
        let sink = problems.clone();
        tab.enable_log().expect("Log domain");
        tab.enable_runtime().expect("Runtime domain");
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let problem = match event {
                Event::RuntimeExceptionThrown(e) => {
                    let details = &e.params.exception_details;
                    let description = details.exception.as_ref().and_then(|x| x.description.clone());
                    Some(format!(
                        "uncaught: {} {}",
                        details.text,
                        description.unwrap_or_default()
                    ))
                }
                Event::RuntimeConsoleAPICalled(e)
                    if matches!(
                        e.params.Type,
                        ConsoleAPICalledEventTypeOption::Error | ConsoleAPICalledEventTypeOption::Assert
                    ) =>
                {
                    let args: Vec<String> = e.params.args.iter().map(|a| format!("{:?}", a.value)).collect();
                    Some(format!("console.error: {}", args.join(" ")))
                }
                Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => Some(format!(
                    "log: {} {}",
                    e.params.entry.text,
                    e.params.entry.url.clone().unwrap_or_default()
                )),
                _ => None,
            };
            if let Some(problem) = problem {
                sink.lock().expect("problems").push(problem);
            }
        }))
        .expect("listener");
        let page = Page {
            _browser: browser,
            tab,
            problems,
        };
        page.viewport(WINDOW.0, WINDOW.1);
        page
    }

    /// Load `url` in the tab, as typing it would.
    fn go(&self, url: &str) {
        self.tab
            .navigate_to(url)
            .expect("navigate")
            .wait_until_navigated()
            .expect("page loads");
    }

    fn eval(&self, expression: &str) -> Value {
        let result = self.tab.evaluate(expression, false).expect("evaluate");
        result.value.unwrap_or(Value::Null)
    }

    /// Wait (15 s at most) until `condition`, a JS expression, is true.
    fn wait_until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.eval(&format!("Boolean({condition})")) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "the page never showed {what} ({condition})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (15 s at most) until the number that `expression` gives passes `test`; that number.
    fn wait_for_number(&self, what: &str, expression: &str, test: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.eval(&format!("String({expression})"));
            let number = value.as_str().and_then(|s| s.parse::<u64>().ok());
            match number {
                Some(n) if test(n) => return n,
                _ => assert!(
                    Instant::now() < deadline,
                    "{what} never moved on the page (last: {value})"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Click an element as a person would: the mouse, at its middle.
    fn click(&self, selector: &str) {
        self.tab
            .wait_for_element(selector)
            .unwrap_or_else(|e| panic!("no {selector} on the page: {e}"))
            .click()
            .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
    }

    /// A PNG of the whole page under `target/test-artifacts/` named `name`; its path.
    fn screenshot(&self, name: &str) -> PathBuf {
        // A viewport as tall as the page, so that one capture shows all of it.
        let height = self.eval("Math.ceil(document.body.getBoundingClientRect().height)");
        self.viewport(WINDOW.0, height.as_u64().map_or(WINDOW.1, |h| h as u32));
        std::thread::sleep(Duration::from_millis(300));
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact folder");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path.canonicalize().unwrap_or(path)
    }

    /// The page's viewport in CSS pixels, whatever the window around it.
    fn viewport(&self, width: u32, height: u32) {
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width,
                height,
                device_scale_factor: 1.0,
                mobile: false,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .expect("set the viewport");
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().expect("problems").clone()
    }
}
