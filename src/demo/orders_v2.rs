//! `acme.orders.v2.OrderService`: the same orders as v1, reshaped (money as `Money`,
//! `items` as `line_items`, `status` as `state`). Only the shape conversion lives here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    invalid_argument, require,
    store::{item_violations, Store},
    violation, PageRequest,
};
use crate::pb::{
    acme::orders::{
        v1,
        v2::{
            order, order_service_server::OrderService, CreateOrderRequest, GetOrderRequest,
            LineItem, ListOrdersRequest, ListOrdersResponse, Money, Order,
        },
    },
    google::rpc::bad_request::FieldViolation,
};

/// `Money.nanos` of one cent.
const NANOS_PER_CENT: i32 = 10_000_000;

/// The v2 order API over the shared store.
#[derive(Debug)]
pub(super) struct OrdersV2 {
    store: Arc<Store>,
}

impl OrdersV2 {
    pub(super) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// `cents` as `Money`: whole units, the rest as nanos with the same sign.
fn money(cents: i64, currency: &str) -> Money {
    let rest = i32::try_from(cents % 100).unwrap_or_default(); // |rest| < 100 always fits
    Money {
        currency_code: currency.to_owned(),
        units: cents / 100,
        nanos: rest * NANOS_PER_CENT,
    }
}

/// `money` in cents, or why it cannot be represented (with the offending subfield).
fn cents(money: &Money) -> Result<i64, (&'static str, &'static str)> {
    let Money { units, nanos, .. } = *money;
    if nanos % NANOS_PER_CENT != 0 || !(-999_999_999..=999_999_999).contains(&nanos) {
        return Err((
            "nanos",
            "must be a whole number of cents: a multiple of 10000000 below 1e9",
        ));
    }
    if (units > 0 && nanos < 0) || (units < 0 && nanos > 0) {
        return Err(("nanos", "must have the sign of units"));
    }
    units
        .checked_mul(100)
        .and_then(|c| c.checked_add(i64::from(nanos / NANOS_PER_CENT)))
        .ok_or(("units", "out of range"))
}

/// A stored (canonical, v1) order in the v2 shape.
fn to_v2(order: v1::Order) -> Order {
    let currency = order.currency.as_str();
    Order {
        state: order.status,
        line_items: order
            .items
            .into_iter()
            .map(|item| LineItem {
                sku: item.sku,
                quantity: item.quantity,
                unit_price: Some(money(item.unit_price_cents, currency)),
            })
            .collect(),
        total: Some(money(order.total_cents, currency)),
        cost: Some(money(order.cost_cents, currency)),
        id: order.id,
        customer_id: order.customer_id,
        create_time: order.create_time,
        internal_note: order.internal_note,
    }
}

/// Converts the amounts of one new order to cents, collecting violations, and checks that
/// they share one currency (which becomes the order's).
#[derive(Debug, Default)]
struct Amounts {
    currency: Option<String>,
    violations: Vec<FieldViolation>,
}

impl Amounts {
    /// `money` (absent means zero) at request field `field` in cents.
    fn cents(&mut self, money: Option<&Money>, field: &str) -> i64 {
        let Some(money) = money else { return 0 };
        if !money.currency_code.is_empty() {
            match &self.currency {
                None => self.currency = Some(money.currency_code.clone()),
                Some(currency) if *currency != money.currency_code => {
                    self.violations.push(violation(
                        format!("{field}.currency_code"),
                        format!("must match the order's other amounts ({currency})"),
                    ));
                }
                Some(_) => {}
            }
        }
        cents(money).unwrap_or_else(|(subfield, description)| {
            self.violations
                .push(violation(format!("{field}.{subfield}"), description));
            0
        })
    }
}

/// A new v2 order in canonical form; `INVALID_ARGUMENT` listing every problem.
fn from_v2(order: Order) -> Result<v1::Order, Status> {
    let mut amounts = Amounts::default();
    let items: Vec<v1::LineItem> = order
        .line_items
        .into_iter()
        .enumerate()
        .map(|(i, item)| v1::LineItem {
            unit_price_cents: amounts.cents(
                item.unit_price.as_ref(),
                &format!("order.line_items[{i}].unit_price"),
            ),
            sku: item.sku,
            quantity: item.quantity,
        })
        .collect();
    let cost_cents = amounts.cents(order.cost.as_ref(), "order.cost");

    let mut violations = amounts.violations;
    violations.extend(item_violations(&items, "order.line_items"));
    if order::State::try_from(order.state).is_err() {
        violations.push(violation("order.state", "unknown state"));
    }
    if !violations.is_empty() {
        return Err(invalid_argument(violations));
    }
    Ok(v1::Order {
        customer_id: order.customer_id,
        status: order.state,
        items,
        currency: amounts.currency.unwrap_or_default(),
        internal_note: order.internal_note,
        cost_cents,
        ..v1::Order::default()
    })
}

#[tonic::async_trait]
impl OrderService for OrdersV2 {
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = request.into_inner().id;
        require(&id, "id")?;
        Ok(Response::new(to_v2(self.store.order(&id)?)))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let request = request.into_inner();
        let page = PageRequest::parse(request.page_size, &request.page_token)?
            .apply(self.store.orders(request.state, "")?);
        Ok(Response::new(ListOrdersResponse {
            orders: page.items.into_iter().map(to_v2).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let order = request
            .into_inner()
            .order
            .ok_or_else(|| invalid_argument([violation("order", "required")]))?;
        Ok(Response::new(to_v2(
            self.store.create_order(from_v2(order)?, "")?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::{
        demo::{orders_v1::OrdersV1, testing},
        pb::acme::orders::v1::{order_service_server::OrderService as _, GetOrderRequest as V1Get},
    };

    fn service() -> OrdersV2 {
        OrdersV2::new(Arc::new(Store::seeded()))
    }

    fn eur(units: i64, nanos: i32) -> Money {
        Money {
            currency_code: "EUR".into(),
            units,
            nanos,
        }
    }

    fn line(sku: &str, quantity: i32, unit_price: Money) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
            unit_price: Some(unit_price),
        }
    }

    async fn create(service: &OrdersV2, order: Order) -> Result<Order, Status> {
        let request = CreateOrderRequest { order: Some(order) };
        service
            .create_order(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    async fn list(
        service: &OrdersV2,
        request: ListOrdersRequest,
    ) -> Result<ListOrdersResponse, Status> {
        service
            .list_orders(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    #[test]
    fn money_round_trips_through_cents() {
        assert_eq!(money(610, "EUR"), eur(6, 100_000_000));
        assert_eq!(money(-250, "EUR"), eur(-2, -500_000_000));
        assert_eq!(money(99, "EUR"), eur(0, 990_000_000));
        for c in [0, 1, -1, 99, -99, 100, 1999, -123_456, i64::MAX, i64::MIN] {
            assert_eq!(cents(&money(c, "EUR")), Ok(c), "{c}");
        }
    }

    #[test]
    fn cents_rejects_what_is_not_whole_cents() {
        assert_eq!(
            cents(&eur(1, 5)),
            Err((
                "nanos",
                "must be a whole number of cents: a multiple of 10000000 below 1e9"
            ))
        );
        assert_eq!(cents(&eur(1, 1_000_000_000)).unwrap_err().0, "nanos");
        assert_eq!(
            cents(&eur(1, -10_000_000)),
            Err(("nanos", "must have the sign of units"))
        );
        assert_eq!(cents(&eur(i64::MAX, 0)), Err(("units", "out of range")));
    }

    #[tokio::test]
    async fn get_shows_the_seeded_order_with_money() {
        let order = service()
            .get_order(Request::new(GetOrderRequest { id: "o-1".into() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(order.state(), order::State::Pending);
        assert_eq!(
            order.line_items,
            [
                line("sku-apple", 3, eur(1, 200_000_000)),
                line("sku-pear", 1, eur(2, 500_000_000))
            ]
        );
        assert_eq!(order.total, Some(eur(6, 100_000_000)));
        assert_eq!(order.cost, Some(eur(4, 0)));
        assert_eq!(order.internal_note, "gift wrap requested");
        assert_eq!(order.create_time.map(|t| t.seconds), Some(1_717_236_000));
    }

    #[tokio::test]
    async fn get_rejects_missing_and_empty_ids() {
        let service = service();
        let get = |id: &str| service.get_order(Request::new(GetOrderRequest { id: id.into() }));
        let missing = get("o-9").await.unwrap_err();
        assert_eq!(
            (missing.code(), missing.message()),
            (Code::NotFound, "order \"o-9\" not found")
        );
        assert_eq!(testing::bad_fields(&get("").await.unwrap_err()), ["id"]);
    }

    #[tokio::test]
    async fn list_pages_and_filters_by_state() {
        let service = service();
        let first = list(
            &service,
            ListOrdersRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let request = ListOrdersRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        };
        let second = list(&service, request).await.unwrap();
        let ids: Vec<&str> = first
            .orders
            .iter()
            .chain(&second.orders)
            .map(|o| o.id.as_str())
            .collect();
        assert_eq!(ids, ["o-1", "o-2", "o-3", "o-4"]);
        assert!(second.next_page_token.is_empty());

        let shipped = list(
            &service,
            ListOrdersRequest {
                state: order::State::Shipped as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(shipped.orders.len(), 1);
        assert_eq!(shipped.orders[0].total, Some(eur(57, 0)));

        let err = list(
            &service,
            ListOrdersRequest {
                page_size: -5,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(testing::bad_fields(&err), ["page_size"]);
        let err = list(
            &service,
            ListOrdersRequest {
                page_token: "x".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(testing::bad_fields(&err), ["page_token"]);
    }

    #[tokio::test]
    async fn create_stores_cents_that_v1_sees() {
        let store = Arc::new(Store::seeded());
        let (v1, v2) = (OrdersV1::new(Arc::clone(&store)), OrdersV2::new(store));
        let order = Order {
            customer_id: "c-1".into(),
            line_items: vec![
                line("sku-a", 2, eur(12, 340_000_000)),
                line("sku-b", 1, eur(0, 50_000_000)),
            ],
            cost: Some(eur(10, 0)),
            internal_note: "via v2".into(),
            ..Default::default()
        };
        let created = create(&v2, order).await.unwrap();
        assert_eq!(
            (created.id.as_str(), created.state()),
            ("o-5", order::State::Pending)
        );
        assert_eq!(created.total, Some(eur(24, 730_000_000)));

        let canonical = v1
            .get_order(Request::new(V1Get {
                id: "o-5".into(),
                customer_id: "c-1".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let prices: Vec<i64> = canonical.items.iter().map(|i| i.unit_price_cents).collect();
        assert_eq!(
            (prices, canonical.total_cents, canonical.cost_cents),
            (vec![1234, 5], 2473, 1000)
        );
        assert_eq!(
            (
                canonical.currency.as_str(),
                canonical.internal_note.as_str()
            ),
            ("EUR", "via v2")
        );
        assert_eq!(to_v2(canonical), created);
    }

    #[tokio::test]
    async fn create_takes_the_currency_of_its_amounts() {
        let usd = Money {
            currency_code: "USD".into(),
            units: 3,
            nanos: 0,
        };
        let created = create(
            &service(),
            Order {
                line_items: vec![line("sku-a", 1, usd.clone())],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(created.total, Some(usd));
        let created = create(&service(), Order::default()).await.unwrap();
        assert_eq!(created.total, Some(eur(0, 0)));
    }

    #[tokio::test]
    async fn create_rejects_mixed_currencies_fractions_of_cents_and_bad_items() {
        let service = service();
        let usd = Money {
            currency_code: "USD".into(),
            units: 1,
            nanos: 0,
        };
        let order = Order {
            line_items: vec![
                line("sku-a", 1, eur(1, 0)),
                line("sku-b", 1, usd.clone()),
                line("", 0, eur(1, 1)),
            ],
            cost: Some(usd),
            state: 9,
            ..Default::default()
        };
        assert_eq!(
            testing::bad_fields(&create(&service, order).await.unwrap_err()),
            [
                "order.line_items[1].unit_price.currency_code",
                "order.line_items[2].unit_price.nanos",
                "order.cost.currency_code",
                "order.line_items[2].sku",
                "order.line_items[2].quantity",
                "order.state",
            ]
        );
        let missing = service
            .create_order(Request::new(CreateOrderRequest { order: None }))
            .await
            .unwrap_err();
        assert_eq!(testing::bad_fields(&missing), ["order"]);
        assert_eq!(
            list(&service, ListOrdersRequest::default())
                .await
                .unwrap()
                .orders
                .len(),
            4
        );
    }
}
