//! Live TV audience: viewers' channel switches (`tv.switch`, keyed by viewer, payload
//! `{"channel": "sports"}` or `{"channel": null}` when the set goes off) become live viewer counts
//! per channel and each viewer's favourite channels.
//!
//! This shows re-keying: for each switch the plugin emits `tv.left` / `tv.joined` *for the
//! channel's actor key* (`channel:<id>`), which the hub routes to that key's shard, where the same
//! plugin keeps the channel's count and publishes `tv.audience`. The viewer's favourites (watch
//! time per channel, top 5) stay in the viewer's state, visible through `GET /api/actors/{id}`.

use hub_plugin_sdk::blocks::TopN;
use hub_plugin_sdk::{Context, Description, Error, Event, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

#[derive(Debug, Deserialize)]
struct Switch {
    #[serde(default)]
    channel: Option<String>,
}

/// What a viewer is watching, since when.
#[derive(Debug, Serialize, Deserialize)]
struct Watching {
    channel: String,
    since: i64,
}

/// Payload of `tv.joined` / `tv.left`, sent to the channel's key.
#[derive(Debug, Serialize, Deserialize)]
struct Viewer {
    viewer: String,
}

/// Payload of `tv.audience`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Audience {
    pub channel: String,
    pub viewers: u64,
}

const WATCHING: &str = "watching";
const VIEWERS: &str = "viewers";
const CHANNEL_PREFIX: &str = "channel:";

pub struct TvAudience {
    favourites: TopN,
}

impl Plugin for TvAudience {
    type Config = Config;

    fn describe() -> Description {
        Description::new("tv-audience", env!("CARGO_PKG_VERSION"))
            .subscribe("tv.switch")
            .subscribe("tv.joined")
            .subscribe("tv.left")
            .emits("tv.joined")
            .emits("tv.left")
            .emits("tv.audience")
    }

    fn new(_config: Config) -> Result<Self, Error> {
        Ok(TvAudience {
            favourites: TopN::new("favourites", 5),
        })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        match event.kind.as_str() {
            "tv.switch" => self.switch(cx, event),
            "tv.joined" => count(cx, 1),
            "tv.left" => count(cx, -1),
            _ => Ok(()),
        }
    }
}

impl TvAudience {
    /// A viewer switched: leave the old channel, join the new one, credit the watch time.
    fn switch(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        let switch: Switch = event.payload()?;
        let viewer = Viewer {
            viewer: cx.actor().to_owned(),
        };
        let old: Option<Watching> = cx.state().get(WATCHING)?;
        if old.as_ref().map(|w| &w.channel) == switch.channel.as_ref() {
            return Ok(());
        }
        if let Some(old) = old {
            let seconds = ((event.time - old.since).max(0) / 1000) as f64;
            self.favourites.add(cx, &old.channel, seconds)?;
            cx.emit_for(&format!("{CHANNEL_PREFIX}{}", old.channel), "tv.left", &viewer)?;
        }
        match switch.channel {
            Some(channel) => {
                cx.emit_for(&format!("{CHANNEL_PREFIX}{channel}"), "tv.joined", &viewer)?;
                cx.state().set(
                    WATCHING,
                    &Watching {
                        channel,
                        since: event.time,
                    },
                )
            }
            None => {
                cx.state().delete(WATCHING);
                Ok(())
            }
        }
    }
}

/// On a channel's key: change its live count and publish it.
fn count(cx: &mut Context, delta: i64) -> Result<(), Error> {
    let Some(channel) = cx.actor().strip_prefix(CHANNEL_PREFIX).map(str::to_owned) else {
        return Err(Error::msg("tv.joined / tv.left must be keyed by channel:<id>"));
    };
    let viewers = cx
        .state()
        .get::<u64>(VIEWERS)?
        .unwrap_or(0)
        .saturating_add_signed(delta);
    cx.state().set(VIEWERS, &viewers)?;
    cx.emit("tv.audience", &Audience { channel, viewers })
}

export_plugin!(TvAudience);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use hub_plugin_sdk::time::MINUTE;
    use serde_json::json;

    #[test]
    fn a_switch_leaves_one_channel_and_joins_another() {
        let mut hub = TestHub::<TvAudience>::new(json!({})).expect("config");
        let out = hub
            .send(hub.event("tv.switch", "v1", &json!({"channel": "news"})))
            .expect("call");
        let joined = out[0].as_emit().expect("emit");
        assert_eq!(
            (joined.kind.as_str(), joined.actor.as_deref()),
            ("tv.joined", Some("channel:news"))
        );
        hub.advance(10 * MINUTE).expect("advance");
        let out = hub
            .send(hub.event("tv.switch", "v1", &json!({"channel": "sports"})))
            .expect("call");
        let kinds: Vec<(&str, Option<&str>)> = out
            .iter()
            .filter_map(|o| o.as_emit())
            .map(|e| (e.kind.as_str(), e.actor.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            vec![("tv.left", Some("channel:news")), ("tv.joined", Some("channel:sports"))]
        );
        assert!(
            hub.send(hub.event("tv.switch", "v1", &json!({"channel": "sports"})))
                .expect("call")
                .is_empty()
        );
    }

    #[test]
    fn channels_count_their_viewers() {
        let mut hub = TestHub::<TvAudience>::new(json!({})).expect("config");
        for viewer in ["a", "b"] {
            hub.send(hub.event("tv.joined", "channel:news", &json!({"viewer": viewer})))
                .expect("call");
        }
        let out = hub
            .send(hub.event("tv.left", "channel:news", &json!({"viewer": "a"})))
            .expect("call");
        let audience: Audience = out[0].as_emit().expect("emit").payload().expect("payload");
        assert_eq!(
            audience,
            Audience {
                channel: "news".into(),
                viewers: 1
            }
        );
        assert!(
            hub.send(hub.event("tv.joined", "viewer-not-channel", &json!({})))
                .is_err()
        );
    }
}
