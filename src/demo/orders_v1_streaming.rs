//! The streaming and raw-body methods of `acme.orders.v1.OrderService`: a
//! live watch, bulk imports (a message stream or a CSV upload), a bidi
//! lookup and a CSV export.

use std::{pin::Pin, sync::Arc};

use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Status, Streaming};

use super::{
    invalid_argument,
    store::{item_violations, Store},
    violation,
};
use crate::pb::{
    acme::orders::v1::{
        order_event::Kind, CreateOrderRequest, GetOrderRequest, ImportOrdersResponse, LineItem,
        Order, OrderEvent, OrderStatus,
    },
    google::api::HttpBody,
};

/// The reply stream type of every streaming method here.
pub(super) type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Messages a slow client may be behind by before a sender waits.
const BUFFER: usize = 16;

const CSV_HEADER: &str = "customer_id,sku,quantity,unit_price_cents";

/// A stream fed by a task; the task ends when the client goes away.
fn replies<T: Send + 'static>() -> (mpsc::Sender<Result<T, Status>>, Replies<T>) {
    let (tx, rx) = mpsc::channel(BUFFER);
    (tx, Box::pin(ReceiverStream::new(rx)))
}

/// `WatchOrders`: the existing orders, then every change, until the client goes away.
pub(super) fn watch(store: &Store, customer_id: String) -> Result<Replies<OrderEvent>, Status> {
    let (existing, mut changes) = store.watch(&customer_id)?;
    let (tx, stream) = replies();
    tokio::spawn(async move {
        for order in existing {
            let event = OrderEvent {
                kind: Kind::Existing as i32,
                order: Some(order),
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                () = tx.closed() => return,
                change = changes.recv() => change,
            };
            let reply = match event {
                Ok(event) => {
                    let theirs = event
                        .order
                        .as_ref()
                        .is_some_and(|o| customer_id.is_empty() || o.customer_id == customer_id);
                    if !theirs {
                        continue;
                    }
                    Ok(event)
                }
                Err(RecvError::Lagged(missed)) => Err(Status::aborted(format!(
                    "the watch fell {missed} changes behind; watch again"
                ))),
                Err(RecvError::Closed) => return,
            };
            let failed = reply.is_err();
            if tx.send(reply).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(stream)
}

/// `ImportOrders`: validates every streamed order, then creates them all.
pub(super) async fn import(
    store: &Store,
    mut requests: Streaming<CreateOrderRequest>,
) -> Result<ImportOrdersResponse, Status> {
    let mut new = Vec::new();
    let mut violations = Vec::new();
    while let Some(CreateOrderRequest { order, order_id }) = requests.message().await? {
        let i = new.len();
        let order = order.unwrap_or_default();
        violations.extend(item_violations(&order.items, &format!("[{i}].items")));
        if order.items.is_empty() {
            violations.push(violation(format!("[{i}].items"), "required"));
        }
        if OrderStatus::try_from(order.status).is_err() {
            violations.push(violation(format!("[{i}].status"), "unknown status"));
        }
        new.push((order, order_id));
    }
    if !violations.is_empty() {
        return Err(invalid_argument(violations));
    }
    let created = store.create_orders(new)?;
    Ok(ImportOrdersResponse {
        order_ids: created.into_iter().map(|o| o.id).collect(),
    })
}

/// `LookupOrders`: each requested order as soon as it is asked for.
pub(super) fn lookup(
    store: Arc<Store>,
    mut requests: Streaming<GetOrderRequest>,
) -> Replies<Order> {
    let (tx, stream) = replies();
    tokio::spawn(async move {
        loop {
            let reply = match requests.message().await {
                Ok(Some(request)) => store.order(&request.id),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let failed = reply.is_err();
            if tx.send(reply).await.is_err() || failed {
                return;
            }
        }
    });
    stream
}

/// `ExportOrders`: a CSV header chunk, then one chunk per order.
pub(super) fn export(store: &Store, customer_id: &str) -> Result<Replies<HttpBody>, Status> {
    let orders = store.orders(OrderStatus::Unspecified as i32, customer_id)?;
    let header = "id,customer_id,status,total_cents,currency\n".to_owned();
    let lines = std::iter::once(header).chain(orders.into_iter().map(|o| {
        format!(
            "{},{},{},{},{}\n",
            o.id,
            o.customer_id,
            o.status().as_str_name(),
            o.total_cents,
            o.currency
        )
    }));
    let chunks: Vec<Result<HttpBody, Status>> = lines
        .map(|line| {
            Ok(HttpBody {
                content_type: "text/csv".to_owned(),
                data: line.into_bytes(),
                extensions: Vec::new(),
            })
        })
        .collect();
    Ok(Box::pin(tokio_stream::iter(chunks)))
}

/// `ImportOrdersCsv`: one order of one line item per CSV line.
pub(super) fn import_csv(
    store: &Store,
    csv: Option<HttpBody>,
) -> Result<ImportOrdersResponse, Status> {
    let csv = csv.unwrap_or_default();
    let essence = csv
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if !essence.eq_ignore_ascii_case("text/csv") {
        return Err(invalid_argument([violation(
            "csv.content_type",
            format!("must be text/csv, not `{}`", csv.content_type),
        )]));
    }
    let text = String::from_utf8(csv.data)
        .map_err(|_| invalid_argument([violation("csv.data", "must be UTF-8")]))?;
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    if lines.next().map(str::trim) != Some(CSV_HEADER) {
        return Err(invalid_argument([violation(
            "csv.data",
            format!("the first line must be `{CSV_HEADER}`"),
        )]));
    }
    let mut new = Vec::new();
    let mut violations = Vec::new();
    for (i, line) in lines.enumerate() {
        match parse_line(line) {
            Some(order) => {
                violations.extend(item_violations(&order.items, &format!("line {}", i + 2)));
                new.push((order, String::new()));
            }
            None => violations.push(violation(
                format!("line {}", i + 2),
                format!("expected `{CSV_HEADER}`"),
            )),
        }
    }
    if !violations.is_empty() {
        return Err(invalid_argument(violations));
    }
    let created = store.create_orders(new)?;
    Ok(ImportOrdersResponse {
        order_ids: created.into_iter().map(|o| o.id).collect(),
    })
}

fn parse_line(line: &str) -> Option<Order> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [customer_id, sku, quantity, unit_price_cents] = fields.as_slice() else {
        return None;
    };
    Some(Order {
        customer_id: (*customer_id).to_owned(),
        items: vec![LineItem {
            sku: (*sku).to_owned(),
            quantity: quantity.parse().ok()?,
            unit_price_cents: unit_price_cents.parse().ok()?,
        }],
        ..Order::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(content_type: &str, text: &str) -> Option<HttpBody> {
        Some(HttpBody {
            content_type: content_type.to_owned(),
            data: text.as_bytes().to_vec(),
            extensions: Vec::new(),
        })
    }

    #[test]
    fn csv_import_creates_one_order_per_line() {
        let store = Store::seeded();
        let reply = import_csv(
            &store,
            csv(
                "text/csv; charset=utf-8",
                &format!("{CSV_HEADER}\nc-9,sku-a,2,100\n\nc-9,sku-b,1,50\n"),
            ),
        )
        .unwrap();
        assert_eq!(reply.order_ids, ["o-5", "o-6"]);
        assert_eq!(store.order("o-5").unwrap().total_cents, 200);
    }

    #[test]
    fn csv_import_refuses_bad_files_and_creates_nothing() {
        let store = Store::seeded();
        let bad = [
            csv("application/json", CSV_HEADER),
            csv("text/csv", "a,b\n"),
            csv(
                "text/csv",
                &format!("{CSV_HEADER}\nc-9,sku-a,2,100\nc-9,,x,1\n"),
            ),
        ];
        for body in bad {
            let status = import_csv(&store, body).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
        assert_eq!(store.orders(0, "c-9").unwrap().len(), 0);
    }
}
