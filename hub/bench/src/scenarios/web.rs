//! The shop's raw web events on `web.*`, mapped by the ingest rule and the clickstream plugin:
//! each page view, add-to-cart and checkout yields exactly one business event whatever the visitor
//! did before. Marketing (`vip-offers`, `offers`) takes `cart.updated` and `checkout.completed`
//! and only starts or cancels a one-hour timer, so it publishes nothing during the bench.

use super::super::workload::{BatchWriter, InputKind, mix64};

/// A page view of a product: one `product.viewed`.
pub(super) static VIEW: InputKind = InputKind {
    subject: "web.page_view",
    outputs: &["hub.events.product.viewed"],
};
/// An add-to-cart: the cart is written, one `cart.updated`; marketing starts its offer timer.
pub(super) static CART: InputKind = InputKind {
    subject: "web.add_to_cart",
    outputs: &["hub.events.cart.updated"],
};
/// A checkout: the cart is cleared, one `checkout.completed`; marketing cancels its offer.
pub(super) static CHECKOUT: InputKind = InputKind {
    subject: "web.checkout_submit",
    outputs: &["hub.events.checkout.completed"],
};

const CATALOG: [(&str, &str, f64); 8] = [
    ("A1", "Shoes", 59.9),
    ("B2", "Hat", 10.5),
    ("C3", "Scarf", 19.9),
    ("D4", "Jacket", 129.0),
    ("E5", "Socks", 4.5),
    ("F6", "Belt", 24.9),
    ("G7", "Gloves", 15.5),
    ("H8", "Bag", 89.9),
];

/// Which customer browses next, and which product.
pub(super) struct Web {
    customers: u64,
    dealt: u64,
}

impl Web {
    pub(super) fn new(customers: usize) -> Web {
        Web {
            customers: customers as u64,
            dealt: 0,
        }
    }

    /// The next visitor, spread over all customers, and a product of the catalog.
    fn next(&mut self) -> (u64, (&'static str, &'static str, f64)) {
        let h = mix64(self.dealt);
        self.dealt += 1;
        (h % self.customers, CATALOG[(h >> 32) as usize % CATALOG.len()])
    }

    pub(super) fn view(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let (c, (sku, name, price)) = self.next();
        w.input(
            &VIEW,
            format_args!(
                r#"{{"visitor":"c{c}","event_id":"w{seq}","url":"/p/{sku}","product":{{"sku":"{sku}","name":"{name}","price":{price}}}}}"#
            ),
        )
    }

    pub(super) fn add_to_cart(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let (c, (sku, name, price)) = self.next();
        w.input(
            &CART,
            format_args!(
                r#"{{"visitor":"c{c}","event_id":"w{seq}","product":{{"sku":"{sku}","name":"{name}","price":{price}}},"qty":1}}"#
            ),
        )
    }

    pub(super) fn checkout(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let (c, _) = self.next();
        w.input(
            &CHECKOUT,
            format_args!(r#"{{"visitor":"c{c}","event_id":"w{seq}","order_id":"o{seq}"}}"#),
        )
    }
}
