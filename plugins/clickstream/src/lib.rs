//! Clickstream mapper: raw web events from a browser collector → business events.
//!
//! The collector posts JSON such as
//! `{"type":"add_to_cart","visitor":"u1","product":{"sku":"A1","name":"Shoes","price":59.9},"qty":1}`
//! which the hub's ingest rule turns into events of kind `web.<type>` for actor `visitor`.
//!
//! | raw (`web.*`)                       | business event                                 |
//! |-------------------------------------|------------------------------------------------|
//! | `page_view` / `click` with a product| `product.viewed` {sku, name, price, url}        |
//! | `add_to_cart`, `remove_from_cart`   | `cart.updated` with the whole cart (kept here)  |
//! | `checkout_submit`                   | `checkout.completed` {order_id, items, total}   |
//!
//! Anything else is ignored: the collector sends more than the business needs.

use hub_plugin_sdk::{Context, Description, Error, Event, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Product {
    pub sku: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub price: f64,
}

#[derive(Debug, Deserialize)]
struct RawWebEvent {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    product: Option<Product>,
    #[serde(default)]
    qty: Option<u32>,
    #[serde(default)]
    order_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct CartItem {
    pub sku: String,
    pub name: String,
    pub price: f64,
    pub qty: u32,
}

/// The cart as carried by `cart.updated` and `checkout.completed`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Cart {
    pub items: Vec<CartItem>,
    pub total: f64,
}

impl Cart {
    fn add(&mut self, product: Product, qty: u32) {
        match self.items.iter_mut().find(|i| i.sku == product.sku) {
            Some(item) => item.qty += qty,
            None => self.items.push(CartItem {
                sku: product.sku,
                name: product.name,
                price: product.price,
                qty,
            }),
        }
        self.recount();
    }
    fn remove(&mut self, sku: &str) {
        self.items.retain(|i| i.sku != sku);
        self.recount();
    }
    fn recount(&mut self) {
        self.total = self.items.iter().map(|i| i.price * f64::from(i.qty)).sum();
        self.total = (self.total * 100.0).round() / 100.0;
    }
}

#[derive(Serialize)]
struct ProductViewed<'a> {
    sku: &'a str,
    name: &'a str,
    price: f64,
    url: Option<&'a str>,
}

#[derive(Serialize)]
struct CheckoutCompleted<'a> {
    order_id: &'a str,
    items: &'a [CartItem],
    total: f64,
}

#[derive(Deserialize, Default)]
pub struct Config {}

pub struct Clickstream;

const CART: &str = "cart";

impl Plugin for Clickstream {
    type Config = Config;

    fn describe() -> Description {
        Description::new("clickstream", env!("CARGO_PKG_VERSION"))
            .subscribe("web.*")
            .emits("product.viewed")
            .emits("cart.updated")
            .emits("checkout.completed")
    }

    fn new(_config: Config) -> Result<Self, Error> {
        Ok(Clickstream)
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        let raw: RawWebEvent = event.payload()?;
        match event.kind.strip_prefix("web.").unwrap_or_default() {
            "page_view" | "click" => {
                if let Some(p) = &raw.product {
                    let viewed = ProductViewed {
                        sku: &p.sku,
                        name: &p.name,
                        price: p.price,
                        url: raw.url.as_deref(),
                    };
                    cx.emit("product.viewed", &viewed)?;
                }
            }
            "add_to_cart" => {
                let product = raw.product.ok_or_else(|| Error::msg("add_to_cart without a product"))?;
                let mut cart: Cart = cx.state().get(CART)?.unwrap_or_default();
                cart.add(product, raw.qty.unwrap_or(1).max(1));
                cx.state().set(CART, &cart)?;
                cx.emit("cart.updated", &cart)?;
            }
            "remove_from_cart" => {
                let product = raw
                    .product
                    .ok_or_else(|| Error::msg("remove_from_cart without a product"))?;
                let mut cart: Cart = cx.state().get(CART)?.unwrap_or_default();
                cart.remove(&product.sku);
                cx.state().set(CART, &cart)?;
                cx.emit("cart.updated", &cart)?;
            }
            "checkout_submit" => {
                let cart: Cart = cx.state().get(CART)?.unwrap_or_default();
                let order_id = raw.order_id.unwrap_or_else(|| event.id.clone());
                let done = CheckoutCompleted {
                    order_id: &order_id,
                    items: &cart.items,
                    total: cart.total,
                };
                cx.emit("checkout.completed", &done)?;
                cx.state().delete(CART);
            }
            _ => {}
        }
        Ok(())
    }
}

export_plugin!(Clickstream);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use serde_json::json;

    fn hub() -> TestHub<Clickstream> {
        TestHub::new(json!({})).expect("config")
    }

    #[test]
    fn page_view_of_a_product_becomes_product_viewed() {
        let mut hub = hub();
        let e = hub.event(
            "web.page_view",
            "u1",
            &json!({"url": "/p/a1", "product": {"sku": "A1", "name": "Shoes", "price": 59.9}}),
        );
        let out = hub.send(e).expect("call");
        let emitted = out[0].as_emit().expect("emit");
        assert_eq!(emitted.kind, "product.viewed");
        let payload: serde_json::Value = emitted.payload().expect("payload");
        assert_eq!(payload["sku"], "A1");
        assert_eq!(payload["url"], "/p/a1");
    }

    #[test]
    fn page_view_without_product_is_ignored() {
        let mut hub = hub();
        let e = hub.event("web.page_view", "u1", &json!({"url": "/"}));
        assert!(hub.send(e).expect("call").is_empty());
    }

    #[test]
    fn cart_accumulates_and_checkout_clears_it() {
        let mut hub = hub();
        let shoes = json!({"product": {"sku": "A1", "name": "Shoes", "price": 50.0}, "qty": 1});
        let hat = json!({"product": {"sku": "B2", "name": "Hat", "price": 10.5}, "qty": 2});
        hub.send(hub.event("web.add_to_cart", "u1", &shoes)).expect("call");
        let out = hub.send(hub.event("web.add_to_cart", "u1", &hat)).expect("call");
        let cart: Cart = out[0].as_emit().expect("emit").payload().expect("cart");
        assert_eq!(cart.items.len(), 2);
        assert_eq!(cart.total, 71.0);

        let out = hub
            .send(hub.event("web.checkout_submit", "u1", &json!({"order_id": "o-1"})))
            .expect("call");
        let done = out[0].as_emit().expect("emit");
        assert_eq!(done.kind, "checkout.completed");
        let payload: serde_json::Value = done.payload().expect("payload");
        assert_eq!(payload["order_id"], "o-1");
        assert_eq!(payload["total"], 71.0);
        assert_eq!(hub.state::<Cart>("u1", CART).expect("state"), None);
    }

    #[test]
    fn remove_from_cart_updates_total() {
        let mut hub = hub();
        let shoes = json!({"product": {"sku": "A1", "price": 50.0}});
        hub.send(hub.event("web.add_to_cart", "u1", &shoes)).expect("call");
        let out = hub.send(hub.event("web.remove_from_cart", "u1", &shoes)).expect("call");
        let cart: Cart = out[0].as_emit().expect("emit").payload().expect("cart");
        assert!(cart.items.is_empty());
        assert_eq!(cart.total, 0.0);
    }

    #[test]
    fn add_to_cart_without_product_is_an_error() {
        let mut hub = hub();
        let err = hub
            .send(hub.event("web.add_to_cart", "u1", &json!({})))
            .expect_err("refused");
        assert!(err.message().contains("without a product"));
    }

    #[test]
    fn carts_are_per_actor() {
        let mut hub = hub();
        let shoes = json!({"product": {"sku": "A1", "price": 50.0}});
        hub.send(hub.event("web.add_to_cart", "u1", &shoes)).expect("call");
        let out = hub.send(hub.event("web.add_to_cart", "u2", &shoes)).expect("call");
        let cart: Cart = out[0].as_emit().expect("emit").payload().expect("cart");
        assert_eq!(cart.items[0].qty, 1);
    }
}
