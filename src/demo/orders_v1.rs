//! `acme.orders.v1.OrderService`: the store's orders in their canonical shape.

use std::{mem, sync::Arc};

use prost_types::FieldMask;
use tonic::{Request, Response, Status, Streaming};

use super::{
    failed_precondition, invalid_argument, not_found,
    orders_v1_streaming::{self, Replies},
    require,
    store::{item_violations, Store},
    violation, PageRequest,
};
use crate::pb::acme::orders::v1::{
    order_service_server::OrderService, CancelOrderRequest, CreateOrderRequest, DeleteOrderRequest,
    ExportOrdersRequest, GetOrderRequest, ImportOrdersCsvRequest, ImportOrdersResponse,
    ListOrdersRequest, ListOrdersResponse, Order, OrderEvent, OrderStatus, UpdateOrderRequest,
    WatchOrdersRequest,
};
use crate::pb::google::api::HttpBody;

/// The v1 order API over the shared store.
#[derive(Debug)]
pub(super) struct OrdersV1 {
    store: Arc<Store>,
}

impl OrdersV1 {
    pub(super) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// The fields an update may change; everything else in `Order` is output only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutable {
    CustomerId,
    Status,
    Items,
    Currency,
    Labels,
    InternalNote,
    CostCents,
}

impl Mutable {
    const ALL: [Self; 7] = [
        Self::CustomerId,
        Self::Status,
        Self::Items,
        Self::Currency,
        Self::Labels,
        Self::InternalNote,
        Self::CostCents,
    ];

    /// The field's update-mask path (proto field name, as gRPC clients send it).
    fn path(self) -> &'static str {
        match self {
            Self::CustomerId => "customer_id",
            Self::Status => "status",
            Self::Items => "items",
            Self::Currency => "currency",
            Self::Labels => "labels",
            Self::InternalNote => "internal_note",
            Self::CostCents => "cost_cents",
        }
    }

    /// The fields `mask` names; all of them for an absent or empty mask (full replacement).
    fn from_mask(mask: Option<FieldMask>) -> Result<Vec<Self>, Status> {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Ok(Self::ALL.to_vec());
        }
        let mut fields = Vec::with_capacity(paths.len());
        let mut violations = Vec::new();
        for path in paths {
            match Self::ALL.into_iter().find(|f| f.path() == path) {
                Some(field) => fields.push(field),
                None => violations.push(violation(
                    "update_mask",
                    format!("\"{path}\" is not a mutable field of Order"),
                )),
            }
        }
        if violations.is_empty() {
            Ok(fields)
        } else {
            Err(invalid_argument(violations))
        }
    }

    /// Moves this field's value from `patch` into `order`.
    fn apply(self, patch: &mut Order, order: &mut Order) {
        match self {
            Self::CustomerId => order.customer_id = mem::take(&mut patch.customer_id),
            Self::Status => order.status = patch.status,
            Self::Items => order.items = mem::take(&mut patch.items),
            Self::Currency => order.currency = mem::take(&mut patch.currency),
            Self::Labels => order.labels = mem::take(&mut patch.labels),
            Self::InternalNote => order.internal_note = mem::take(&mut patch.internal_note),
            Self::CostCents => order.cost_cents = patch.cost_cents,
        }
    }
}

/// `order` or `INVALID_ARGUMENT` naming the `order` field.
fn required_order(order: Option<Order>) -> Result<Order, Status> {
    order.ok_or_else(|| invalid_argument([violation("order", "required")]))
}

#[tonic::async_trait]
impl OrderService for OrdersV1 {
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let GetOrderRequest { id, customer_id } = request.into_inner();
        require(&id, "id")?;
        let order = self.store.order(&id)?;
        // Another customer's order is reported missing so ids cannot be probed.
        if !customer_id.is_empty() && order.customer_id != customer_id {
            return Err(not_found("order", &id));
        }
        Ok(Response::new(order))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let request = request.into_inner();
        let page = PageRequest::parse(request.page_size, &request.page_token)?
            .apply(self.store.orders(request.status, &request.customer_id)?);
        Ok(Response::new(ListOrdersResponse {
            orders: page.items,
            next_page_token: page.next_page_token,
            total_size: i32::try_from(page.total_size).unwrap_or(i32::MAX),
        }))
    }

    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let CreateOrderRequest { order, order_id } = request.into_inner();
        let order = required_order(order)?;
        let mut violations = item_violations(&order.items, "order.items");
        if OrderStatus::try_from(order.status).is_err() {
            violations.push(violation("order.status", "unknown status"));
        }
        if !violations.is_empty() {
            return Err(invalid_argument(violations));
        }
        Ok(Response::new(self.store.create_order(order, &order_id)?))
    }

    async fn update_order(
        &self,
        request: Request<UpdateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let UpdateOrderRequest { order, update_mask } = request.into_inner();
        let mut patch = required_order(order)?;
        require(&patch.id, "order.id")?;
        let fields = Mutable::from_mask(update_mask)?;

        let mut violations = Vec::new();
        if fields.contains(&Mutable::Items) {
            violations = item_violations(&patch.items, "order.items");
        }
        if fields.contains(&Mutable::Status)
            && !matches!(OrderStatus::try_from(patch.status), Ok(status) if status != OrderStatus::Unspecified)
        {
            violations.push(violation(
                "order.status",
                "must be a known status other than ORDER_STATUS_UNSPECIFIED",
            ));
        }
        if !violations.is_empty() {
            return Err(invalid_argument(violations));
        }

        let id = mem::take(&mut patch.id);
        let order = self.store.update_order(&id, |order| {
            for field in fields {
                field.apply(&mut patch, order);
            }
            Ok(())
        })?;
        Ok(Response::new(order))
    }

    async fn delete_order(
        &self,
        request: Request<DeleteOrderRequest>,
    ) -> Result<Response<()>, Status> {
        let id = request.into_inner().id;
        require(&id, "id")?;
        self.store.delete_order(&id)?;
        Ok(Response::new(()))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let CancelOrderRequest { id, reason } = request.into_inner();
        require(&id, "id")?;
        let order = self.store.update_order(&id, |order| match order.status() {
            OrderStatus::Pending | OrderStatus::Paid => {
                order.set_status(OrderStatus::Cancelled);
                if !reason.is_empty() {
                    if !order.internal_note.is_empty() {
                        order.internal_note.push('\n');
                    }
                    order.internal_note.push_str("cancelled: ");
                    order.internal_note.push_str(&reason);
                }
                Ok(())
            }
            status => Err(failed_precondition(
                format!("orders/{id}"),
                format!(
                    "order is {}; only PENDING or PAID orders can be cancelled",
                    status.as_str_name()
                ),
            )),
        })?;
        Ok(Response::new(order))
    }

    type WatchOrdersStream = Replies<OrderEvent>;

    async fn watch_orders(
        &self,
        request: Request<WatchOrdersRequest>,
    ) -> Result<Response<Self::WatchOrdersStream>, Status> {
        let customer_id = request.into_inner().customer_id;
        orders_v1_streaming::watch(&self.store, customer_id).map(Response::new)
    }

    async fn import_orders(
        &self,
        request: Request<Streaming<CreateOrderRequest>>,
    ) -> Result<Response<ImportOrdersResponse>, Status> {
        orders_v1_streaming::import(&self.store, request.into_inner())
            .await
            .map(Response::new)
    }

    type LookupOrdersStream = Replies<Order>;

    async fn lookup_orders(
        &self,
        request: Request<Streaming<GetOrderRequest>>,
    ) -> Result<Response<Self::LookupOrdersStream>, Status> {
        Ok(Response::new(orders_v1_streaming::lookup(
            Arc::clone(&self.store),
            request.into_inner(),
        )))
    }

    type ExportOrdersStream = Replies<HttpBody>;

    async fn export_orders(
        &self,
        request: Request<ExportOrdersRequest>,
    ) -> Result<Response<Self::ExportOrdersStream>, Status> {
        let customer_id = request.into_inner().customer_id;
        orders_v1_streaming::export(&self.store, &customer_id).map(Response::new)
    }

    async fn import_orders_csv(
        &self,
        request: Request<ImportOrdersCsvRequest>,
    ) -> Result<Response<ImportOrdersResponse>, Status> {
        orders_v1_streaming::import_csv(&self.store, request.into_inner().csv).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic::Code;

    use super::*;
    use crate::{demo::testing, pb::acme::orders::v1::LineItem};

    fn service() -> OrdersV1 {
        OrdersV1::new(Arc::new(Store::seeded()))
    }

    fn item(sku: &str, quantity: i32, unit_price_cents: i64) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        }
    }

    async fn get(service: &OrdersV1, id: &str) -> Result<Order, Status> {
        let request = GetOrderRequest {
            id: id.into(),
            customer_id: String::new(),
        };
        service
            .get_order(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    async fn list(
        service: &OrdersV1,
        request: ListOrdersRequest,
    ) -> Result<ListOrdersResponse, Status> {
        service
            .list_orders(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    async fn create(
        service: &OrdersV1,
        order: Option<Order>,
        order_id: &str,
    ) -> Result<Order, Status> {
        let request = CreateOrderRequest {
            order,
            order_id: order_id.into(),
        };
        service
            .create_order(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    async fn update(
        service: &OrdersV1,
        order: Option<Order>,
        paths: &[&str],
    ) -> Result<Order, Status> {
        let update_mask = Some(FieldMask {
            paths: paths.iter().map(|&p| p.to_owned()).collect(),
        });
        service
            .update_order(Request::new(UpdateOrderRequest { order, update_mask }))
            .await
            .map(Response::into_inner)
    }

    async fn cancel(service: &OrdersV1, id: &str, reason: &str) -> Result<Order, Status> {
        let request = CancelOrderRequest {
            id: id.into(),
            reason: reason.into(),
        };
        service
            .cancel_order(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    fn ids(response: &ListOrdersResponse) -> Vec<&str> {
        response.orders.iter().map(|o| o.id.as_str()).collect()
    }

    #[tokio::test]
    async fn get_returns_the_seeded_order_with_internal_fields() {
        let order = get(&service(), "o-1").await.unwrap();
        assert_eq!(order.status(), OrderStatus::Pending);
        assert_eq!(
            (order.customer_id.as_str(), order.currency.as_str()),
            ("c-1", "EUR")
        );
        assert_eq!(
            order.items,
            [item("sku-apple", 3, 120), item("sku-pear", 1, 250)]
        );
        assert_eq!((order.total_cents, order.cost_cents), (610, 400));
        assert_eq!(order.internal_note, "gift wrap requested");
        assert_eq!(order.create_time.map(|t| t.seconds), Some(1_717_236_000));
    }

    #[tokio::test]
    async fn get_rejects_missing_and_empty_ids() {
        let missing = get(&service(), "o-9").await.unwrap_err();
        assert_eq!(
            (missing.code(), missing.message()),
            (Code::NotFound, "order \"o-9\" not found")
        );
        assert_eq!(
            testing::bad_fields(&get(&service(), "").await.unwrap_err()),
            ["id"]
        );
    }

    #[tokio::test]
    async fn get_through_a_customer_hides_other_customers_orders() {
        let service = service();
        let request = |customer_id: &str| {
            Request::new(GetOrderRequest {
                id: "o-3".into(),
                customer_id: customer_id.into(),
            })
        };
        assert_eq!(
            service
                .get_order(request("c-2"))
                .await
                .unwrap()
                .into_inner()
                .id,
            "o-3"
        );
        let err = service.get_order(request("c-1")).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "order \"o-3\" not found")
        );
    }

    #[tokio::test]
    async fn list_returns_everything_in_id_order_by_default() {
        let response = list(&service(), ListOrdersRequest::default())
            .await
            .unwrap();
        assert_eq!(ids(&response), ["o-1", "o-2", "o-3", "o-4"]);
        assert_eq!(response.total_size, 4);
        assert!(response.next_page_token.is_empty());
    }

    #[tokio::test]
    async fn list_pages_with_tokens() {
        let service = service();
        let first = list(
            &service,
            ListOrdersRequest {
                page_size: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (ids(&first), first.total_size),
            (vec!["o-1", "o-2", "o-3"], 4)
        );
        assert!(!first.next_page_token.is_empty());
        let request = ListOrdersRequest {
            page_size: 3,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        };
        let second = list(&service, request).await.unwrap();
        assert_eq!((ids(&second), second.total_size), (vec!["o-4"], 4));
        assert!(second.next_page_token.is_empty());
    }

    #[tokio::test]
    async fn list_filters_by_status_and_customer() {
        let service = service();
        let paid = list(
            &service,
            ListOrdersRequest {
                status: OrderStatus::Paid as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!((ids(&paid), paid.total_size), (vec!["o-2"], 1));
        let c2 = list(
            &service,
            ListOrdersRequest {
                customer_id: "c-2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(ids(&c2), ["o-3", "o-4"]);
        let request = ListOrdersRequest {
            customer_id: "c-2".into(),
            status: OrderStatus::Pending as i32,
            ..Default::default()
        };
        assert_eq!(list(&service, request).await.unwrap().total_size, 0);
    }

    #[tokio::test]
    async fn list_rejects_negative_page_size_and_foreign_tokens() {
        let service = service();
        let err = list(
            &service,
            ListOrdersRequest {
                page_size: -1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(testing::bad_fields(&err), ["page_size"]);
        let err = list(
            &service,
            ListOrdersRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(testing::bad_fields(&err), ["page_token"]);
    }

    #[tokio::test]
    async fn create_assigns_ids_defaults_and_totals() {
        let service = service();
        let order = Order {
            id: "ignored".into(),
            customer_id: "c-3".into(),
            items: vec![item("sku-a", 2, 150), item("sku-b", 1, 99)],
            total_cents: 1,
            ..Default::default()
        };
        let created = create(&service, Some(order.clone()), "").await.unwrap();
        assert_eq!(created.id, "o-5");
        assert_eq!(
            (
                created.status(),
                created.currency.as_str(),
                created.total_cents
            ),
            (OrderStatus::Pending, "EUR", 399)
        );
        assert!(created.create_time.is_some() && created.update_time == created.create_time);
        assert_eq!(get(&service, "o-5").await.unwrap(), created);
        assert_eq!(create(&service, Some(order), "").await.unwrap().id, "o-6");
    }

    #[tokio::test]
    async fn create_keeps_given_currency_status_and_id() {
        let service = service();
        let order = Order {
            currency: "USD".into(),
            status: OrderStatus::Paid as i32,
            ..Default::default()
        };
        let created = create(&service, Some(order.clone()), "o-100")
            .await
            .unwrap();
        assert_eq!(
            (
                created.id.as_str(),
                created.currency.as_str(),
                created.status()
            ),
            ("o-100", "USD", OrderStatus::Paid)
        );
        let taken = create(&service, Some(order), "o-1").await.unwrap_err();
        assert_eq!(
            (taken.code(), taken.message()),
            (Code::AlreadyExists, "order \"o-1\" already exists")
        );
    }

    #[tokio::test]
    async fn create_validates_order_and_items() {
        let service = service();
        assert_eq!(
            testing::bad_fields(&create(&service, None, "").await.unwrap_err()),
            ["order"]
        );
        let order = Order {
            status: 42,
            items: vec![item("ok", 1, 1), item("", 0, 1), item("neg", -2, 1)],
            ..Default::default()
        };
        let err = create(&service, Some(order), "").await.unwrap_err();
        assert_eq!(
            testing::bad_fields(&err),
            [
                "order.items[1].sku",
                "order.items[1].quantity",
                "order.items[2].quantity",
                "order.status"
            ]
        );
        assert_eq!(
            list(&service, ListOrdersRequest::default())
                .await
                .unwrap()
                .total_size,
            4
        );
    }

    #[tokio::test]
    async fn update_changes_only_masked_fields() {
        let service = service();
        let patch = Order {
            id: "o-1".into(),
            customer_id: "c-9".into(),
            items: vec![item("sku-kiwi", 5, 40)],
            internal_note: "not in the mask".into(),
            total_cents: 1,
            ..Default::default()
        };
        let updated = update(&service, Some(patch), &["customer_id", "items"])
            .await
            .unwrap();
        assert_eq!(
            (updated.customer_id.as_str(), updated.total_cents),
            ("c-9", 200)
        );
        assert_eq!(updated.internal_note, "gift wrap requested");
        assert_eq!(
            (updated.status(), updated.currency.as_str()),
            (OrderStatus::Pending, "EUR")
        );
        assert_ne!(updated.update_time, updated.create_time);
        assert_eq!(get(&service, "o-1").await.unwrap(), updated);
    }

    #[tokio::test]
    async fn update_without_mask_replaces_all_mutable_fields() {
        let service = service();
        let patch = Order {
            id: "o-2".into(),
            customer_id: "c-7".into(),
            status: OrderStatus::Shipped as i32,
            items: vec![item("sku-x", 1, 1000)],
            labels: HashMap::from([("gift".into(), "yes".into())]),
            ..Default::default()
        };
        let request = UpdateOrderRequest {
            order: Some(patch),
            update_mask: None,
        };
        let updated = service
            .update_order(Request::new(request))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (updated.id.as_str(), updated.customer_id.as_str()),
            ("o-2", "c-7")
        );
        assert_eq!(
            (
                updated.status(),
                updated.total_cents,
                updated.currency.as_str()
            ),
            (OrderStatus::Shipped, 1000, "EUR")
        );
        assert_eq!(
            updated.labels,
            HashMap::from([("gift".into(), "yes".into())])
        );
        assert_eq!(
            (updated.internal_note.as_str(), updated.cost_cents),
            ("", 0)
        );
        assert_eq!(
            updated.create_time.map(|t| t.seconds),
            Some(1_717_236_000 + 86_400)
        );
    }

    #[tokio::test]
    async fn update_rejects_bad_requests() {
        let service = service();
        let o1 = || {
            Some(Order {
                id: "o-1".into(),
                status: OrderStatus::Paid as i32,
                ..Default::default()
            })
        };
        let err = update(
            &service,
            o1(),
            &["status", "total_cents", "bogus", "create_time"],
        )
        .await
        .unwrap_err();
        assert_eq!(
            testing::bad_fields(&err),
            ["update_mask", "update_mask", "update_mask"]
        );
        assert_eq!(
            testing::bad_fields(&update(&service, None, &["status"]).await.unwrap_err()),
            ["order"]
        );
        let anonymous = Some(Order {
            status: OrderStatus::Paid as i32,
            ..Default::default()
        });
        assert_eq!(
            testing::bad_fields(&update(&service, anonymous, &["status"]).await.unwrap_err()),
            ["order.id"]
        );
        let unspecified = Some(Order {
            id: "o-1".into(),
            ..Default::default()
        });
        assert_eq!(
            testing::bad_fields(
                &update(&service, unspecified, &["status"])
                    .await
                    .unwrap_err()
            ),
            ["order.status"]
        );
        let bad_items = Some(Order {
            id: "o-1".into(),
            items: vec![item("", 1, 1)],
            ..Default::default()
        });
        assert_eq!(
            testing::bad_fields(&update(&service, bad_items, &["items"]).await.unwrap_err()),
            ["order.items[0].sku"]
        );
        let missing = Some(Order {
            id: "o-9".into(),
            ..Default::default()
        });
        assert_eq!(
            update(&service, missing, &["customer_id"])
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        assert_eq!(
            get(&service, "o-1").await.unwrap().status(),
            OrderStatus::Pending
        );
    }

    #[tokio::test]
    async fn delete_removes_the_order() {
        let service = service();
        let delete =
            |id: &str| service.delete_order(Request::new(DeleteOrderRequest { id: id.into() }));
        delete("o-2").await.unwrap();
        assert_eq!(
            get(&service, "o-2").await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(delete("o-2").await.unwrap_err().code(), Code::NotFound);
        assert_eq!(testing::bad_fields(&delete("").await.unwrap_err()), ["id"]);
    }

    #[tokio::test]
    async fn cancel_moves_pending_and_paid_orders_to_cancelled() {
        let service = service();
        let cancelled = cancel(&service, "o-1", "changed my mind").await.unwrap();
        assert_eq!(cancelled.status(), OrderStatus::Cancelled);
        assert_eq!(
            cancelled.internal_note,
            "gift wrap requested\ncancelled: changed my mind"
        );
        assert_ne!(cancelled.update_time, cancelled.create_time);
        let cancelled = cancel(&service, "o-2", "").await.unwrap();
        assert_eq!(
            (cancelled.status(), cancelled.internal_note.as_str()),
            (OrderStatus::Cancelled, "paid by card")
        );
        assert_eq!(get(&service, "o-2").await.unwrap(), cancelled);
    }

    #[tokio::test]
    async fn cancel_refuses_shipped_and_cancelled_orders() {
        let service = service();
        for (id, state) in [("o-3", "SHIPPED"), ("o-4", "CANCELLED")] {
            let err = cancel(&service, id, "too late").await.unwrap_err();
            let violations = testing::precondition_violations(&err);
            assert_eq!(violations.len(), 1);
            assert_eq!(violations[0].r#type, "STATE");
            assert_eq!(violations[0].subject, format!("orders/{id}"));
            assert!(
                violations[0].description.contains(state),
                "{}",
                violations[0].description
            );
            let unchanged = get(&service, id).await.unwrap();
            assert!(!unchanged.internal_note.contains("too late"));
        }
    }

    #[tokio::test]
    async fn cancel_rejects_missing_and_empty_ids() {
        let service = service();
        assert_eq!(
            cancel(&service, "o-9", "").await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            testing::bad_fields(&cancel(&service, "", "").await.unwrap_err()),
            ["id"]
        );
    }
}
