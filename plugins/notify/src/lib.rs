//! Notify: a delivery plugin. It takes the actions the arbiter let through and renders each one
//! for a channel — a push message to the customer's devices, a request to a CRM webhook — with
//! the customer's name from the profile.
//!
//! Config: `routes`, tried in order; the first whose `actions` pattern matches the action's name
//! renders it (an action no route matches gets no delivery from this plugin):
//!
//! ```json
//! {"routes": [
//!   {"actions": "offer.*", "channel": "push", "title": "For you, {name}", "text": "Your cart is waiting"},
//!   {"actions": "support.*", "channel": "crm"}
//! ]}
//! ```
//!
//! `title` and `text` are templates: `{name}` is the profile's `name` (or "there"), `{field}` a
//! top-level field of the action's payload. `target` defaults to the actor (for `push`, the
//! devices connected on `/push/{actor}`). The body is JSON:
//! `{"id", "action", "actor", "title", "text", "data"}`, `data` being the action's payload.

use hub_plugin_sdk::pattern::{kind_matches, pattern_error};
use hub_plugin_sdk::{Context, Description, Error, Event, Plugin, export_plugin};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    routes: Vec<Route>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Action names, with the usual wildcards.
    actions: String,
    channel: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            routes: vec![Route {
                actions: ">".into(),
                channel: "push".into(),
                target: None,
                title: None,
                text: None,
            }],
        }
    }
}

#[derive(Deserialize, Default)]
struct Profile {
    name: Option<String>,
}

pub struct Notify {
    routes: Vec<Route>,
}

impl Plugin for Notify {
    type Config = Config;

    fn describe() -> Description {
        Description::new("notify", env!("CARGO_PKG_VERSION")).subscribe("action.>")
    }

    fn new(config: Config) -> Result<Self, Error> {
        for route in &config.routes {
            if let Some(why) = pattern_error(&route.actions) {
                return Err(Error::msg(format!("route {:?}: {why}", route.actions)));
            }
            if route.channel.is_empty() {
                return Err(Error::msg(format!("route {:?}: channel is empty", route.actions)));
            }
        }
        Ok(Notify { routes: config.routes })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        let Some(action) = event.action_name() else {
            return Ok(());
        };
        let Some(route) = self.routes.iter().find(|r| kind_matches(&r.actions, action)) else {
            return Ok(());
        };
        let data: Value = if event.payload.is_empty() {
            Value::Object(Map::new())
        } else {
            event.payload()?
        };
        let name = cx.profile::<Profile>()?.unwrap_or_default().name;
        let name = name.as_deref().unwrap_or("there");
        let title = route
            .title
            .as_deref()
            .map_or_else(|| action.to_owned(), |t| render(t, name, &data));
        let text = route
            .text
            .as_deref()
            .map(|t| render(t, name, &data))
            .unwrap_or_default();
        let body = json!({
            "id": event.id,
            "action": action,
            "actor": cx.actor(),
            "title": title,
            "text": text,
            "data": data,
        });
        let body = serde_json::to_vec(&body).map_err(|e| Error::msg(e.to_string()))?;
        let target = route.target.clone().unwrap_or_else(|| cx.actor().to_owned());
        cx.deliver(&route.channel, &target, body);
        Ok(())
    }
}

/// Fill `{name}` and `{field}` placeholders; an unknown placeholder stays as written.
fn render(template: &str, name: &str, data: &Value) -> String {
    let mut out = String::with_capacity(template.len() + name.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            rest = &rest[open..];
            break;
        };
        let key = &after[..close];
        match (key, data.get(key)) {
            ("name", _) => out.push_str(name),
            (_, Some(Value::String(s))) => out.push_str(s),
            (_, Some(v @ (Value::Number(_) | Value::Bool(_)))) => out.push_str(&v.to_string()),
            _ => {
                out.push('{');
                out.push_str(key);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

export_plugin!(Notify);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;

    fn hub() -> TestHub<Notify> {
        TestHub::<Notify>::new(json!({"routes": [
            {"actions": "offer.*", "channel": "push", "title": "For you, {name}", "text": "{items} items, {total} EUR {missing}"},
            {"actions": "support.*", "channel": "crm", "target": "queue-1"}
        ]}))
        .expect("config")
    }

    #[test]
    fn renders_an_offer_for_the_customers_devices_with_their_name() {
        let mut hub = hub();
        hub.set_profile("c1", &json!({"name": "Ada"})).expect("profile");
        let event = hub.event("action.offer.cart_reminder", "c1", &json!({"items": 2, "total": 59.9}));
        let out = hub.send(event.clone()).expect("call");
        assert_eq!(out.len(), 1, "{out:?}");
        let d = out[0].as_delivery().expect("delivery");
        assert_eq!((d.channel.as_str(), d.target.as_str()), ("push", "c1"));
        let body: Value = serde_json::from_slice(&d.body).expect("json");
        assert_eq!(body["title"], "For you, Ada");
        assert_eq!(body["text"], "2 items, 59.9 EUR {missing}");
        assert_eq!(body["id"], json!(event.id));
        assert_eq!(body["action"], "offer.cart_reminder");
        assert_eq!(body["data"]["items"], 2);
    }

    #[test]
    fn routes_by_action_name_and_leaves_the_rest() {
        let mut hub = hub();
        let out = hub
            .send(hub.event("action.support.callback", "c2", &json!({"failures": 3})))
            .expect("call");
        let d = out[0].as_delivery().expect("delivery");
        assert_eq!((d.channel.as_str(), d.target.as_str()), ("crm", "queue-1"));
        let body: Value = serde_json::from_slice(&d.body).expect("json");
        assert_eq!(body["title"], "support.callback", "no title: the action's name");
        let out = hub
            .send(hub.event("action.alert.meter", "c2", &json!({})))
            .expect("call");
        assert!(out.is_empty(), "no route for alerts: {out:?}");
    }

    #[test]
    fn refuses_a_bad_route() {
        let err = TestHub::<Notify>::new(json!({"routes": [{"actions": "a.>.b", "channel": "push"}]}))
            .err()
            .expect("refused");
        assert!(err.message().contains("route \"a.>.b\""), "{err}");
    }
}
