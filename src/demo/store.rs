//! The state behind the example services.
//!
//! Orders are kept once, as `acme.orders.v1.Order` messages: v1 serves them as they are and
//! v2 only reshapes them, so both API versions always agree. Locks are std `RwLock`s held
//! for plain map operations only, never across an `.await`. Every change is broadcast as an
//! `OrderEvent` for `WatchOrders`, sent under the lock so that watchers see changes in order.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{PoisonError, RwLock},
    time::SystemTime,
};

use prost_types::Timestamp;
use tokio::sync::broadcast;
use tonic::Status;

use super::{not_found, violation};
use crate::pb::{
    acme::{
        orders::v1::{order_event::Kind as EventKind, LineItem, Order, OrderEvent, OrderStatus},
        users::v1::User,
    },
    google::rpc::bad_request::FieldViolation,
};

/// Currency of orders that do not name one.
const DEFAULT_CURRENCY: &str = "EUR";

/// Changes a watcher may fall behind by before its watch is ended.
const CHANGE_BACKLOG: usize = 256;

/// Orders and users of the example services.
#[derive(Debug)]
pub(super) struct Store {
    orders: RwLock<Orders>,
    /// Keyed by resource name, so one tenant's users are adjacent and sorted.
    users: RwLock<BTreeMap<String, User>>,
    changes: broadcast::Sender<OrderEvent>,
}

#[derive(Debug)]
struct Orders {
    by_id: HashMap<String, Order>,
    /// Numeric suffix of the next server-assigned id (`o-5`, `o-6`, …).
    next_id: u64,
}

impl Orders {
    /// The next `o-N` id that no order (including client-named ones) has taken.
    fn fresh_id(&mut self) -> String {
        loop {
            let id = format!("o-{}", self.next_id);
            self.next_id += 1;
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }
}

/// A panic while a lock was held leaves the store suspect; report it instead of guessing.
fn poisoned<T>(_: PoisonError<T>) -> Status {
    Status::internal("example store is unavailable: a previous request panicked")
}

/// Listing order for order ids: `o-2` before `o-10`, client-chosen ids last.
fn id_order(id: &str) -> (u64, &str) {
    let number = id.strip_prefix("o-").and_then(|n| n.parse().ok());
    (number.unwrap_or(u64::MAX), id)
}

/// Fills in what the server owns after every write: default currency, total, update time.
fn settle(order: &mut Order, now: Timestamp) {
    if order.currency.is_empty() {
        DEFAULT_CURRENCY.clone_into(&mut order.currency);
    }
    order.total_cents = order
        .items
        .iter()
        .map(|item| i64::from(item.quantity).saturating_mul(item.unit_price_cents))
        .fold(0, i64::saturating_add);
    order.update_time = Some(now);
}

/// Problems with line items (`{field}[i].sku`, `{field}[i].quantity`), whichever API version
/// names the list `field`.
pub(super) fn item_violations(items: &[LineItem], field: &str) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item.sku.is_empty() {
            violations.push(violation(format!("{field}[{i}].sku"), "required"));
        }
        if item.quantity <= 0 {
            violations.push(violation(
                format!("{field}[{i}].quantity"),
                "must be positive",
            ));
        }
    }
    violations
}

impl Store {
    /// The demo data set: four orders, one per status, and users in two tenants.
    pub(super) fn seeded() -> Self {
        let orders = [
            seed_order(
                1,
                "c-1",
                OrderStatus::Pending,
                &[("sku-apple", 3, 120), ("sku-pear", 1, 250)],
                "gift wrap requested",
                400,
            ),
            seed_order(
                2,
                "c-1",
                OrderStatus::Paid,
                &[("sku-book", 1, 1999), ("sku-pen", 2, 150)],
                "paid by card",
                1500,
            ),
            seed_order(
                3,
                "c-2",
                OrderStatus::Shipped,
                &[("sku-lamp", 1, 4500), ("sku-bulb", 4, 300)],
                "fragile",
                3900,
            ),
            seed_order(
                4,
                "c-2",
                OrderStatus::Cancelled,
                &[("sku-mug", 2, 800), ("sku-tea", 1, 650)],
                "out of stock",
                1200,
            ),
        ];
        let users = [
            seed_user("acme", "alice", "Alice Adams", &["admin", "buyer"]),
            seed_user("acme", "bob", "Bob Brown", &["buyer"]),
            seed_user("globex", "carol", "Carol Clark", &["buyer"]),
        ];
        Self {
            orders: RwLock::new(Orders {
                next_id: 5,
                by_id: orders.into_iter().map(|o| (o.id.clone(), o)).collect(),
            }),
            users: RwLock::new(users.into_iter().map(|u| (u.name.clone(), u)).collect()),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
        }
    }

    /// The orders of `customer_id` (all when empty) as they are now, and every change from
    /// then on, with no gap or overlap between the two.
    pub(super) fn watch(
        &self,
        customer_id: &str,
    ) -> Result<(Vec<Order>, broadcast::Receiver<OrderEvent>), Status> {
        let orders = self.orders.read().map_err(poisoned)?;
        let changes = self.changes.subscribe();
        let mut existing: Vec<Order> = orders
            .by_id
            .values()
            .filter(|o| customer_id.is_empty() || o.customer_id == customer_id)
            .cloned()
            .collect();
        existing.sort_by(|a, b| id_order(&a.id).cmp(&id_order(&b.id)));
        Ok((existing, changes))
    }

    fn announce(&self, kind: EventKind, order: &Order) {
        // No watcher is not an error.
        let _ = self.changes.send(OrderEvent {
            kind: kind as i32,
            order: Some(order.clone()),
        });
    }

    /// One order; `NOT_FOUND` when missing.
    pub(super) fn order(&self, id: &str) -> Result<Order, Status> {
        let orders = self.orders.read().map_err(poisoned)?;
        orders
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("order", id))
    }

    /// Orders with `status` (any when UNSPECIFIED) of `customer_id` (any when empty), in id order.
    pub(super) fn orders(&self, status: i32, customer_id: &str) -> Result<Vec<Order>, Status> {
        let orders = self.orders.read().map_err(poisoned)?;
        let mut matching: Vec<Order> = orders
            .by_id
            .values()
            .filter(|o| status == OrderStatus::Unspecified as i32 || o.status == status)
            .filter(|o| customer_id.is_empty() || o.customer_id == customer_id)
            .cloned()
            .collect();
        matching.sort_by(|a, b| id_order(&a.id).cmp(&id_order(&b.id)));
        Ok(matching)
    }

    /// Stores a new, already validated order under `order_id` (server-assigned when empty);
    /// `ALREADY_EXISTS` when taken. New orders are PENDING unless they say otherwise.
    pub(super) fn create_order(&self, order: Order, order_id: &str) -> Result<Order, Status> {
        self.create_orders(vec![(order, order_id.to_owned())])?
            .pop()
            .ok_or_else(|| Status::internal("no order was created"))
    }

    /// Stores new, already validated orders under their ids (server-assigned when empty), all
    /// or none: `ALREADY_EXISTS` when a chosen id is taken or chosen twice.
    pub(super) fn create_orders(&self, new: Vec<(Order, String)>) -> Result<Vec<Order>, Status> {
        let mut orders = self.orders.write().map_err(poisoned)?;
        for (i, (_, id)) in new.iter().enumerate() {
            let repeated = new[..i].iter().any(|(_, earlier)| earlier == id);
            if !id.is_empty() && (orders.by_id.contains_key(id) || repeated) {
                return Err(Status::already_exists(format!(
                    "order \"{id}\" already exists"
                )));
            }
        }
        let now = Timestamp::from(SystemTime::now());
        let mut created = Vec::with_capacity(new.len());
        for (mut order, order_id) in new {
            order.id = if order_id.is_empty() {
                orders.fresh_id()
            } else {
                order_id
            };
            if order.status == OrderStatus::Unspecified as i32 {
                order.status = OrderStatus::Pending as i32;
            }
            order.create_time = Some(now);
            settle(&mut order, now);
            orders.by_id.insert(order.id.clone(), order.clone());
            self.announce(EventKind::Created, &order);
            created.push(order);
        }
        Ok(created)
    }

    /// Applies `change` to order `id` atomically: nothing is stored when it fails.
    /// `NOT_FOUND` when missing.
    pub(super) fn update_order(
        &self,
        id: &str,
        change: impl FnOnce(&mut Order) -> Result<(), Status>,
    ) -> Result<Order, Status> {
        let mut orders = self.orders.write().map_err(poisoned)?;
        let stored = orders
            .by_id
            .get_mut(id)
            .ok_or_else(|| not_found("order", id))?;
        let mut order = stored.clone();
        change(&mut order)?;
        settle(&mut order, Timestamp::from(SystemTime::now()));
        stored.clone_from(&order);
        self.announce(EventKind::Updated, &order);
        Ok(order)
    }

    /// Removes order `id`; `NOT_FOUND` when missing.
    pub(super) fn delete_order(&self, id: &str) -> Result<(), Status> {
        let mut orders = self.orders.write().map_err(poisoned)?;
        let order = orders
            .by_id
            .remove(id)
            .ok_or_else(|| not_found("order", id))?;
        self.announce(EventKind::Deleted, &order);
        Ok(())
    }

    /// The user named `name` (`tenants/{t}/users/{u}`); `NOT_FOUND` when missing.
    pub(super) fn user(&self, name: &str) -> Result<User, Status> {
        let users = self.users.read().map_err(poisoned)?;
        users
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("user", name))
    }

    /// The users under `parent` (`tenants/{t}`), sorted by name; empty for unknown tenants.
    pub(super) fn users(&self, parent: &str) -> Result<Vec<User>, Status> {
        let prefix = format!("{parent}/users/");
        let users = self.users.read().map_err(poisoned)?;
        Ok(users
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .map(|(_, user)| user.clone())
            .collect())
    }

    /// Stores `user` under its name, stamping its create time; `ALREADY_EXISTS` when taken.
    pub(super) fn create_user(&self, mut user: User) -> Result<User, Status> {
        let mut users = self.users.write().map_err(poisoned)?;
        if users.contains_key(&user.name) {
            return Err(Status::already_exists(format!(
                "user \"{}\" already exists",
                user.name
            )));
        }
        user.create_time = Some(Timestamp::from(SystemTime::now()));
        users.insert(user.name.clone(), user.clone());
        Ok(user)
    }
}

/// Seed order `o-{n}`, created on day `n` of June 2024 at 10:00 UTC.
fn seed_order(
    n: i64,
    customer_id: &str,
    status: OrderStatus,
    items: &[(&str, i32, i64)],
    internal_note: &str,
    cost_cents: i64,
) -> Order {
    let created = Timestamp {
        seconds: 1_717_236_000 + (n - 1) * 86_400,
        nanos: 0,
    };
    let mut order = Order {
        id: format!("o-{n}"),
        customer_id: customer_id.to_owned(),
        status: status as i32,
        items: items
            .iter()
            .map(|&(sku, quantity, unit_price_cents)| LineItem {
                sku: sku.to_owned(),
                quantity,
                unit_price_cents,
            })
            .collect(),
        currency: DEFAULT_CURRENCY.to_owned(),
        create_time: Some(created),
        labels: HashMap::from([(
            "channel".to_owned(),
            if n % 2 == 1 { "web" } else { "app" }.to_owned(),
        )]),
        internal_note: internal_note.to_owned(),
        cost_cents,
        ..Order::default()
    };
    settle(&mut order, created);
    order
}

/// Seed user `tenants/{tenant}/users/{id}`, created 2024-01-15 09:00 UTC.
fn seed_user(tenant: &str, id: &str, display_name: &str, roles: &[&str]) -> User {
    User {
        name: format!("tenants/{tenant}/users/{id}"),
        display_name: display_name.to_owned(),
        email: format!("{id}@{tenant}.example"),
        roles: roles.iter().map(|&r| r.to_owned()).collect(),
        create_time: Some(Timestamp {
            seconds: 1_705_309_200,
            nanos: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_has_one_order_per_status_with_totals_and_internal_fields() {
        let store = Store::seeded();
        let orders = store.orders(0, "").unwrap();
        let summary: Vec<_> = orders
            .iter()
            .map(|o| {
                (
                    o.id.as_str(),
                    o.customer_id.as_str(),
                    o.status,
                    o.total_cents,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("o-1", "c-1", 1, 610),
                ("o-2", "c-1", 2, 2299),
                ("o-3", "c-2", 3, 5700),
                ("o-4", "c-2", 4, 2250)
            ]
        );
        for order in &orders {
            assert_eq!(order.currency, "EUR");
            assert_eq!(order.items.len(), 2);
            assert!(!order.internal_note.is_empty() && order.cost_cents > 0);
            assert!(order.create_time.is_some() && order.update_time == order.create_time);
        }
    }

    #[test]
    fn seed_users_live_in_two_tenants() {
        let store = Store::seeded();
        let names = |parent| {
            store
                .users(parent)
                .unwrap()
                .into_iter()
                .map(|u| u.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("tenants/acme"),
            ["tenants/acme/users/alice", "tenants/acme/users/bob"]
        );
        assert_eq!(names("tenants/globex"), ["tenants/globex/users/carol"]);
        assert!(names("tenants/ac").is_empty());
        assert_eq!(
            store.user("tenants/acme/users/alice").unwrap().roles,
            ["admin", "buyer"]
        );
    }

    #[test]
    fn fresh_ids_skip_client_chosen_ones_and_sort_numerically() {
        let store = Store::seeded();
        store.create_order(Order::default(), "o-5").unwrap();
        assert_eq!(store.create_order(Order::default(), "").unwrap().id, "o-6");
        for _ in 7..=10 {
            store.create_order(Order::default(), "").unwrap();
        }
        store.create_order(Order::default(), "custom").unwrap();
        let ids: Vec<String> = store
            .orders(0, "")
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ids[8..], ["o-9", "o-10", "custom"]);
    }

    #[test]
    fn failed_update_changes_nothing() {
        let store = Store::seeded();
        let before = store.order("o-1").unwrap();
        let err = store
            .update_order("o-1", |order| {
                order.customer_id = "c-9".into();
                Err(Status::aborted("no"))
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert_eq!(store.order("o-1").unwrap(), before);
    }

    #[test]
    fn totals_saturate_instead_of_overflowing() {
        let store = Store::seeded();
        let item = LineItem {
            sku: "gold".into(),
            quantity: i32::MAX,
            unit_price_cents: i64::MAX,
        };
        let order = store
            .create_order(
                Order {
                    items: vec![item.clone(), item],
                    ..Order::default()
                },
                "",
            )
            .unwrap();
        assert_eq!(order.total_cents, i64::MAX);
    }

    #[test]
    fn item_violations_name_each_bad_field() {
        let items = [
            LineItem {
                sku: "a".into(),
                quantity: 1,
                unit_price_cents: 5,
            },
            LineItem {
                sku: String::new(),
                quantity: 0,
                unit_price_cents: 5,
            },
        ];
        let fields: Vec<String> = item_violations(&items, "order.items")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["order.items[1].sku", "order.items[1].quantity"]);
    }
}
