//! Legacy customer-database change rows for customer-creation: raw JSON on `db.customer`,
//! `db.address` and `db.account` (mapped by an ingest rule), the three rows of a customer in one
//! of the six orders. The third row yields `customer.created`; rows of a customer already created
//! are updates, which the plugin ignores. No customer stays incomplete, and the window is an hour,
//! so `customer.incomplete` never comes.

use super::super::workload::{BatchWriter, InputKind, mix64};
use super::Lanes;

/// Per table: a row that leaves its customer incomplete (or updates a created one), and the row
/// that completes the customer.
static CUSTOMER: [InputKind; 2] = row_kinds("db.customer");
static ADDRESS: [InputKind; 2] = row_kinds("db.address");
static ACCOUNT: [InputKind; 2] = row_kinds("db.account");

const fn row_kinds(subject: &'static str) -> [InputKind; 2] {
    [
        InputKind { subject, outputs: &[] },
        InputKind {
            subject,
            outputs: &["hub.events.customer.created"],
        },
    ]
}

/// The orders in which a customer's three rows arrive (indices into the tables).
const ORDERS: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

pub(super) struct Rows {
    lanes: Lanes,
    /// Per customer: rows so far (from the fourth on, updates of a created customer).
    rows: Vec<u32>,
}

impl Rows {
    pub(super) fn new(customers: usize) -> Rows {
        Rows {
            lanes: Lanes::new(customers as u64, 3),
            rows: vec![0; customers],
        }
    }

    pub(super) fn next(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let c = self.lanes.next();
        let n = &mut self.rows[c as usize];
        let (row, was_created) = (*n, *n >= 3);
        *n = n.saturating_add(1);
        let table = ORDERS[(mix64(c) % ORDERS.len() as u64) as usize][row as usize % 3];
        let kind = usize::from(row == 2);
        let op = if was_created { "update" } else { "insert" };
        match table {
            0 => w.input(
                &CUSTOMER[kind],
                format_args!(
                    r#"{{"customer_id":"c{c}","row_id":"r{seq}","op":"{op}","row":{{"name":"Customer {c}","email":"c{c}@example.com"}}}}"#
                ),
            ),
            1 => w.input(
                &ADDRESS[kind],
                format_args!(
                    r#"{{"customer_id":"c{c}","row_id":"r{seq}","op":"{op}","row":{{"street":"Main St {}","city":"Oslo"}}}}"#,
                    c % 500 + 1
                ),
            ),
            _ => w.input(
                &ACCOUNT[kind],
                format_args!(
                    r#"{{"customer_id":"c{c}","row_id":"r{seq}","op":"{op}","row":{{"iban":"NO93 8601 {c:07}"}}}}"#
                ),
            ),
        }
    }
}
