//! REST → gRPC transcoding over real HTTP: path variables, query parameters of
//! every type, body bindings, response_body, JSON options, the example services.

mod common;

use common::{assert_status, violations, Gateway};
use reqwest::Method;
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn path_variables_fill_scalar_and_nested_fields() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/v1/echo/hello").await;
    assert_eq!((status, body), (200, json!({"stringValue": "hello"})));
    let (status, body) = gw.get("/v1/echo/nested/abc/-42").await;
    assert_eq!(
        (status, body),
        (200, json!({"nested": {"name": "abc"}, "int64Value": "-42"}))
    );
    let (status, body) = gw
        .get("/v1/echo/typed/true/GREEN/2.5/18446744073709551615")
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"boolValue": true, "color": "GREEN", "doubleValue": 2.5, "uint64Value": "18446744073709551615"})
        )
    );
    let (_, body) = gw.get("/v1/echo/typed/1/2/-1e3/0").await;
    assert_eq!(
        body,
        json!({"boolValue": true, "color": "GREEN", "doubleValue": -1000.0})
    );
}

#[tokio::test]
async fn multi_segment_variables_capture_their_sub_template() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/v1/echo/shelves/1/books/2/info").await;
    assert_eq!(
        (status, body),
        (200, json!({"stringValue": "shelves/1/books/2"}))
    );
    let (status, body) = gw.get("/v1/echo/files/files/a/b/c.txt").await;
    assert_eq!(
        (status, body),
        (200, json!({"stringValue": "files/a/b/c.txt"}))
    );
}

#[tokio::test]
async fn path_value_that_does_not_parse_is_refused_naming_the_field() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/v1/echo/nested/abc/12x").await;
    assert_eq!(status, 400);
    assert_status(&body, Code::InvalidArgument, "int64_value");
    assert_eq!(
        violations(&body),
        [("int64_value".into(), "`12x` is not a 64-bit integer".into())]
    );
    let (status, body) = gw.get("/v1/echo/typed/maybe/RED/1/1").await;
    assert_eq!(status, 400);
    assert_eq!(violations(&body)[0].0, "bool_value");
    let (status, body) = gw.get("/v1/echo/typed/true/PURPLE/1/1").await;
    assert_eq!(status, 400);
    assert!(violations(&body)[0].1.contains("RED, GREEN"), "{body}");
}

#[tokio::test]
async fn query_parameters_of_every_scalar_type() {
    let gw = Gateway::start().await;
    let query = "stringValue=a+b%21&int32Value=-5&int64_value=9007199254740993&uint32Value=7&uint64Value=18446744073709551615\
        &sint32Value=-1&sint64Value=-2&fixed32Value=3&fixed64Value=4&sfixed32Value=-3&sfixed64Value=-4\
        &floatValue=1.5&doubleValue=-Infinity&boolValue=true&bytesValue=aGk-_w&color=RED&optionalString=o";
    let (status, body) = gw.get(&format!("/v1/echo?{query}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "stringValue": "a b!", "int32Value": -5, "int64Value": "9007199254740993", "uint32Value": 7,
            "uint64Value": "18446744073709551615", "sint32Value": -1, "sint64Value": "-2", "fixed32Value": 3,
            "fixed64Value": "4", "sfixed32Value": -3, "sfixed64Value": "-4", "floatValue": 1.5,
            "doubleValue": "-Infinity", "boolValue": true, "bytesValue": "aGk+/w==", "color": "RED",
            "optionalString": "o"
        })
    );
}

#[tokio::test]
async fn query_parameters_fill_nested_repeated_and_enum_fields() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .get("/v1/echo?nested.name=n&nested.child.value=3&nested.tags=a&nested.tags=b&repeatedString=x&repeated_string=y\
              &repeatedInt32=1&repeatedInt32=2&repeatedColor=1&repeatedColor=GREEN&choiceInt=4")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "nested": {"name": "n", "child": {"value": 3}, "tags": ["a", "b"]},
            "repeatedString": ["x", "y"], "repeatedInt32": [1, 2], "repeatedColor": ["RED", "GREEN"], "choiceInt": 4
        })
    );
}

#[tokio::test]
async fn query_parameters_take_well_known_types_in_string_form() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .get("/v1/echo?timestamp=2024-05-01T10:00:00.5%2B02:00&duration=1.5s&fieldMask=a,bC.d\
              &int64Wrapper=5&uint64Wrapper=6&int32Wrapper=-7&uint32Wrapper=8&boolWrapper=false&stringWrapper=s\
              &bytesWrapper=aGk%3D&doubleWrapper=2.5&floatWrapper=0.5\
              &repeatedTimestamp=1970-01-01T00:00:00Z&repeatedTimestamp=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "timestamp": "2024-05-01T08:00:00.500Z", "duration": "1.500s", "fieldMask": "a,bC.d",
            "int64Wrapper": "5", "uint64Wrapper": "6", "int32Wrapper": -7, "uint32Wrapper": 8, "boolWrapper": false,
            "stringWrapper": "s", "bytesWrapper": "aGk=", "doubleWrapper": 2.5, "floatWrapper": 0.5,
            "repeatedTimestamp": ["1970-01-01T00:00:00Z", "2000-01-01T00:00:00Z"]
        })
    );
}

#[tokio::test]
async fn query_parameters_that_name_no_settable_field_are_refused() {
    let gw = Gateway::start().await;
    let cases = [
        (
            "/v1/echo?stringValu=x",
            "stringValu",
            "unknown query parameter",
        ),
        (
            "/v1/echo?nested.nope=x",
            "nested.nope",
            "`nested` has no field `nope`",
        ),
        (
            "/v1/echo?nested.child.nope=x",
            "nested.child.nope",
            "`nested.child` has no field `nope`",
        ),
        (
            "/v1/echo?stringValue.x=1",
            "stringValue.x",
            "`stringValue` has no fields",
        ),
        (
            "/v1/echo?timestamp.seconds.x=1",
            "timestamp.seconds.x",
            "`timestamp.seconds` has no fields",
        ),
        (
            "/v1/orders?stauts=PAID",
            "stauts",
            "unknown query parameter",
        ),
        ("/v1/echo?labels=x", "labels", "is a map"),
        ("/v1/echo?nested=x", "nested", "is a message"),
        ("/v1/echo?structValue=x", "structValue", "is a message"),
        (
            "/v1/echo/abc?stringValue=x",
            "stringValue",
            "bound by the URL path",
        ),
        (
            "/v1/echo/nested/a/1?nested.name=x",
            "nested.name",
            "bound by the URL path",
        ),
        (
            "/v1/echo/nested/a/1?nested=x",
            "nested",
            "bound by the URL path",
        ),
    ];
    for (path, field, reason) in cases {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_status(&body, Code::InvalidArgument, field);
        let found = violations(&body);
        assert_eq!(found.len(), 1, "{path}: {body}");
        assert_eq!(found[0].0, field, "{path}");
        assert!(found[0].1.contains(reason), "{path}: {}", found[0].1);
        // Only what the client wrote: no proto type names.
        let text = format!("{} {}", body["message"], found[0].1);
        for internal in ["protogate.testing", "acme.orders", "Request", "Message"] {
            assert!(!text.contains(internal), "{path}: {text}");
        }
    }
    let (status, body) = gw.post("/v1/echo?int32Value=1", json!({})).await;
    assert_eq!(status, 400, "query with body \"*\": {body}");
    assert_eq!(violations(&body)[0].0, "int32Value");
}

#[tokio::test]
async fn query_values_that_do_not_parse_name_the_parameter_and_the_form() {
    let gw = Gateway::start().await;
    let cases = [
        ("int32Value=1.5", "`1.5` is not a 32-bit integer"),
        ("uint64Value=-1", "`-1` is not an unsigned 64-bit integer"),
        ("boolValue=yes", "`yes` is not a boolean"),
        ("bytesValue=%25%25", "is not base64"),
        (
            "color=BLUE",
            "`BLUE` is not one of COLOR_UNSPECIFIED, RED, GREEN",
        ),
        ("timestamp=yesterday", "is not an RFC 3339 timestamp"),
        ("duration=5", "is not a duration"),
        ("int32Wrapper=x", "`x` is not a 32-bit integer"),
        ("floatValue=1e39", "out of range"),
    ];
    for (query, reason) in cases {
        let (status, body) = gw.get(&format!("/v1/echo?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let name = query.split('=').next().unwrap();
        let found = violations(&body);
        assert_eq!(found[0].0, name, "{query}");
        assert!(found[0].1.contains(reason), "{query}: {}", found[0].1);
    }
}

#[tokio::test]
async fn query_text_that_does_not_decode_exactly_is_refused_naming_the_parameter() {
    let gw = Gateway::start().await;
    let cases = [
        ("stringValue=%FF", "stringValue", "not UTF-8"),
        (
            "stringValue=ok&repeatedString=a%C3",
            "repeatedString",
            "not UTF-8",
        ),
        (
            "stringValue=%zz",
            "stringValue",
            "malformed percent-encoding",
        ),
        (
            "stringValue=abc%4",
            "stringValue",
            "malformed percent-encoding",
        ),
        ("nested.name=%", "nested.name", "malformed percent-encoding"),
        ("%FF=1", "%FF", "not UTF-8"),
        (
            "string%zzValue=1",
            "string%zzValue",
            "malformed percent-encoding",
        ),
        ("fields=%FF", "fields", "not UTF-8"),
    ];
    for (query, parameter, reason) in cases {
        let (status, body) = gw.get(&format!("/v1/echo?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let found = violations(&body);
        assert_eq!(found.len(), 1, "{query}: {body}");
        assert_eq!(found[0].0, parameter, "{query}");
        assert!(found[0].1.contains(reason), "{query}: {}", found[0].1);
    }
    // The header that says what `fields` says: not altered either.
    let value = reqwest::header::HeaderValue::from_bytes(b"string\xffValue").unwrap();
    let (status, body) = gw
        .send(gw.client.get(gw.url("/v1/echo")).header("x-fields", value))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(violations(&body)[0].0, "x-fields");
    // Form decoding: `+` is a space, `%2B` a plus; a `bytes` field takes
    // base64 (here of 0xFF 0xEF), whatever bytes it holds.
    assert_eq!(
        gw.get("/v1/echo?stringValue=a+b%2Bc%C3%A9&bytesValue=%2F%2B8%3D")
            .await,
        (200, json!({"stringValue": "a b+cé", "bytesValue": "/+8="}))
    );
}

#[tokio::test]
async fn timestamps_and_durations_are_set_by_their_fields_or_whole() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.get("/v1/echo?timestamp.seconds=5&timestamp.nanos=6&duration.seconds=-3&duration.nanos=-500000000")
            .await,
        (
            200,
            json!({"timestamp": "1970-01-01T00:00:05.000000006Z", "duration": "-3.500s"})
        )
    );
    assert_eq!(
        gw.get("/v1/echo?timestamp.seconds=1714557600").await,
        (200, json!({"timestamp": "2024-05-01T10:00:00Z"}))
    );
    let refused = [
        (
            "timestamp=2024-05-01T10:00:00Z&timestamp.nanos=6",
            "timestamp",
            "not both",
        ),
        ("duration.seconds=1&duration=1s", "duration", "not both"),
        (
            "timestamp.nanos=1000000000",
            "timestamp",
            "`nanos` within 0 to 999999999",
        ),
        (
            "timestamp.seconds=-62135596801",
            "timestamp",
            "years 1 to 9999",
        ),
        (
            "duration.seconds=1&duration.nanos=-1",
            "duration",
            "of the same sign",
        ),
        ("duration.seconds=315576000001", "duration", "±315576000000"),
        (
            "timestamp.seconds=soon",
            "timestamp.seconds",
            "not a 64-bit integer",
        ),
    ];
    for (query, parameter, reason) in refused {
        let (status, body) = gw.get(&format!("/v1/echo?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let found = violations(&body);
        assert_eq!(found.len(), 1, "{query}: {body}");
        assert_eq!(found[0].0, parameter, "{query}");
        assert!(found[0].1.contains(reason), "{query}: {}", found[0].1);
    }
}

#[tokio::test]
async fn ignored_and_unknown_query_parameters_can_be_allowed() {
    let gw = Gateway::start_with(|config| {
        config.query.ignored = vec!["access_token".into(), "_".into()]
    })
    .await;
    let (status, body) = gw.get("/v1/echo/x?access_token=secret&_=123").await;
    assert_eq!((status, body), (200, json!({"stringValue": "x"})));
    let (status, _) = gw.get("/v1/echo/x?other=1").await;
    assert_eq!(status, 400);

    let lax = Gateway::start_with(|config| config.query.ignore_unknown = true).await;
    let (status, body) = lax.get("/v1/echo?typo=1&int32Value=2").await;
    assert_eq!((status, body), (200, json!({"int32Value": 2})));
    let (status, _) = lax.get("/v1/echo?int32Value=two").await;
    assert_eq!(
        status, 400,
        "a known parameter with a bad value is still refused"
    );
}

#[tokio::test]
async fn whole_body_takes_every_well_known_type_in_its_json_form() {
    let gw = Gateway::start().await;
    let message = json!({
        "stringValue": "s", "int64Value": "-9223372036854775808", "uint64Value": "18446744073709551615",
        "floatValue": "NaN", "bytesValue": "AAEC", "color": "GREEN",
        "nested": {"name": "n", "child": {"tags": ["t"]}},
        "repeatedNested": [{"name": "a"}, {"value": 2}],
        "labels": {"k": "v"}, "nestedById": {"7": {"name": "seven"}},
        "timestamp": "1999-12-31T23:59:59.999999999Z", "duration": "-0.000000001s", "fieldMask": "stringValue,nested.name",
        "doubleWrapper": 1.25, "int64Wrapper": "-1", "boolWrapper": true, "stringWrapper": "", "bytesWrapper": "AA==",
        "structValue": {"a": [1.5, "x", null, {"b": false}]}, "value": 3.5, "listValue": ["x", -2.5],
        "any": {"@type": "type.googleapis.com/protogate.testing.v1.Nested", "name": "inside"},
        "empty": {}, "choiceString": "c"
    });
    let (status, body) = gw.post("/v1/echo", message.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, message);
}

#[tokio::test]
async fn json_input_accepts_proto_names_and_numbers_in_both_forms() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .post("/v1/echo", json!({"string_value": "a", "int64_value": 5, "uint32Value": "6", "color": 1, "repeated_color": ["GREEN", 1]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"stringValue": "a", "int64Value": "5", "uint32Value": 6, "color": "RED", "repeatedColor": ["GREEN", "RED"]})
    );
}

#[tokio::test]
async fn body_field_binding_takes_that_field_and_query_sets_the_rest() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .send_json(
            Method::PUT,
            "/v1/echo/abc/nested?int32Value=3",
            json!({"name": "n", "value": 2}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"stringValue": "abc", "int32Value": 3, "nested": {"name": "n", "value": 2}})
        )
    );
    let (status, body) = gw
        .send_json(Method::PUT, "/v1/echo/abc/nested?nested.name=x", json!({}))
        .await;
    assert_eq!(status, 400);
    assert!(
        violations(&body)[0].1.contains("bound by the request body"),
        "{body}"
    );
    let (status, body) = gw.post("/v1/echo/abc/tags", json!(["a", "b"])).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"stringValue": "abc", "repeatedString": ["a", "b"]})
        )
    );
}

#[tokio::test]
async fn empty_body_is_an_empty_message() {
    let gw = Gateway::start().await;
    let (status, body) = gw.send(gw.client.post(gw.url("/v1/echo"))).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = gw
        .send(gw.client.put(gw.url("/v1/echo/x/nested")).body(" \n"))
        .await;
    assert_eq!((status, body), (200, json!({"stringValue": "x"})));
}

/// A chunked body arrives as several pieces (hyper hands each chunk on
/// as it is): they are read whole, in order, before transcoding.
#[tokio::test]
async fn a_body_sent_in_pieces_is_read_whole() {
    let gw = Gateway::start().await;
    let json = r#"{"stringValue":"in pieces","int64Value":"-42","nested":{"name":"abc"}}"#;
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = json
        .as_bytes()
        .chunks(7)
        .map(|piece| Ok(piece.to_vec()))
        .collect();
    let request = gw
        .client
        .post(gw.url("/v1/echo"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )));
    let (status, body) = gw.send(request).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"stringValue": "in pieces", "int64Value": "-42", "nested": {"name": "abc"}})
        )
    );
}

#[tokio::test]
async fn response_body_selects_a_field_of_the_reply() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .post(
            "/v1/echo:nested",
            json!({"stringValue": "dropped", "nested": {"name": "x"}}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"name": "x"})));
    let (status, body) = gw
        .get("/v1/echo/literal/search?repeatedString=a&repeatedString=b")
        .await;
    assert_eq!((status, body), (200, json!(["a", "b"])));
    let (status, body) = gw.get("/v1/echo/literal/search").await;
    assert_eq!((status, body), (200, json!([])));
}

#[tokio::test]
async fn additional_bindings_and_custom_methods_reach_the_same_rpc() {
    let gw = Gateway::start().await;
    let (status, body) = gw.send(gw.client.delete(gw.url("/v1/echo/gone"))).await;
    assert_eq!((status, body), (200, json!({"stringValue": "gone"})));
    let search = Method::from_bytes(b"SEARCH").unwrap();
    let (status, body) = gw
        .send(
            gw.client
                .request(search, gw.url("/v1/echo/custom?int32Value=9")),
        )
        .await;
    assert_eq!((status, body), (200, json!({"int32Value": 9})));
}

#[tokio::test]
async fn unannotated_methods_are_hidden_unless_exposed() {
    let gw = Gateway::start().await;
    let (status, _) = gw
        .post(
            "/protogate.testing.v1.TestService/Hidden",
            json!({"stringValue": "h"}),
        )
        .await;
    assert_eq!(status, 404);
    let exposed = Gateway::start_with(|config| config.descriptors.expose_unannotated = true).await;
    let (status, body) = exposed
        .post(
            "/protogate.testing.v1.TestService/Hidden",
            json!({"stringValue": "h"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"stringValue": "h"})));
}

#[tokio::test]
async fn json_print_and_parse_options_apply() {
    let gw = Gateway::start_with(|config| {
        config.json.emit_unpopulated = true;
        config.json.use_proto_field_names = true;
        config.json.enums_as_numbers = true;
        config.json.ignore_unknown_fields = true;
    })
    .await;
    let (status, body) = gw
        .post(
            "/v1/echo",
            json!({"color": "GREEN", "notAField": 1, "nested": {}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["color"], 2);
    assert_eq!(body["int64_value"], "0");
    assert_eq!(body["repeated_string"], json!([]));
    assert_eq!(body["nested"], json!({"name": "", "value": 0, "tags": []}));
    assert!(body.get("notAField").is_none() && body.get("stringValue").is_none());

    let strict = Gateway::start().await;
    let (status, body) = strict.post("/v1/echo", json!({"notAField": 1})).await;
    assert_eq!(status, 400);
    assert_status(
        &body,
        Code::InvalidArgument,
        "unrecognized field name 'notAField'",
    );
}

// === the example services ===

#[tokio::test]
async fn orders_v1_crud_through_rest() {
    let gw = Gateway::start().await;
    let (status, order) = gw.get("/v1/orders/o-1").await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["id"], "o-1");
    assert_eq!(order["status"], "PENDING");
    assert!(
        order["totalCents"].is_string(),
        "int64 prints as a string: {order}"
    );

    let (status, list) = gw.get("/v1/orders?status=PAID").await;
    assert_eq!(status, 200);
    assert!(
        list["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["status"] == "PAID"),
        "{list}"
    );
    let (_, page) = gw.get("/v1/orders?pageSize=1").await;
    assert_eq!(page["orders"].as_array().unwrap().len(), 1);
    let token = page["nextPageToken"].as_str().unwrap().to_owned();
    let (_, next) = gw
        .get(&format!("/v1/orders?page_size=1&pageToken={token}"))
        .await;
    assert_ne!(next["orders"][0]["id"], page["orders"][0]["id"]);

    let new = json!({"customerId": "c-9", "items": [{"sku": "pen", "quantity": 3, "unitPriceCents": "250"}]});
    let (status, created) = gw.post("/v1/orders", new).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["totalCents"], "750");
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, updated) = gw
        .send_json(
            Method::PATCH,
            &format!("/v1/orders/{id}?updateMask=status"),
            json!({"status": "PAID", "currency": "USD"}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["status"].clone(), updated["currency"].clone()),
        (json!("PAID"), json!("EUR"))
    );

    let (status, cancelled) = gw
        .post(
            &format!("/v1/orders/{id}:cancel"),
            json!({"reason": "changed mind"}),
        )
        .await;
    assert_eq!(
        (status, cancelled["status"].clone()),
        (200, json!("CANCELLED"))
    );

    let (status, body) = gw
        .send(gw.client.delete(gw.url(&format!("/v1/orders/{id}"))))
        .await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = gw.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(status, 404);
    assert_status(&body, Code::NotFound, &id);
}

#[tokio::test]
async fn path_wins_over_the_same_field_in_the_body() {
    let gw = Gateway::start().await;
    let (status, updated) = gw
        .send_json(
            Method::PATCH,
            "/v1/orders/o-2?updateMask=customerId",
            json!({"id": "o-1", "customerId": "c-7"}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["id"].clone(), updated["customerId"].clone()),
        (json!("o-2"), json!("c-7"))
    );
    let (_, untouched) = gw.get("/v1/orders/o-1").await;
    assert_ne!(untouched["customerId"], "c-7");
}

#[tokio::test]
async fn orders_v1_errors_carry_their_details() {
    let gw = Gateway::start().await;
    let (status, body) = gw.post("/v1/orders/o-3:cancel", json!({})).await;
    assert_eq!(status, 400, "FAILED_PRECONDITION maps to 400: {body}");
    assert_status(&body, Code::FailedPrecondition, "");
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.PreconditionFailure"
    );
    let (status, body) = gw.post("/v1/orders", json!({"order": {}})).await;
    assert_eq!(
        status, 400,
        "body is the order itself, so this names an unknown field: {body}"
    );
    let (status, body) = gw
        .post("/v1/orders", json!({"items": [{"sku": "", "quantity": 0}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert!(
        body["details"][0]["fieldViolations"]
            .as_array()
            .unwrap()
            .len()
            >= 2,
        "{body}"
    );
}

#[tokio::test]
async fn additional_binding_with_customer_in_the_path() {
    let gw = Gateway::start().await;
    let (_, order) = gw.get("/v1/orders/o-1").await;
    let customer = order["customerId"].as_str().unwrap();
    let (status, body) = gw
        .get(&format!("/v1/customers/{customer}/orders/o-1"))
        .await;
    assert_eq!((status, body["id"].clone()), (200, json!("o-1")));
    let (status, _) = gw.get("/v1/customers/nobody/orders/o-1").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn api_versions_are_packages_with_their_own_routes() {
    let gw = Gateway::start().await;
    let (status, v2) = gw.get("/v2/orders/o-1").await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["state"], "PENDING");
    assert!(
        v2["total"]["currencyCode"].is_string(),
        "money is a message in v2: {v2}"
    );
    assert!(v2.get("totalCents").is_none());
    let (status, body) = gw.get("/v2/orders?state=SHIPPED").await;
    assert_eq!(status, 200);
    assert!(
        body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["state"] == "SHIPPED"),
        "{body}"
    );
}

#[tokio::test]
async fn users_with_nested_resource_names() {
    let gw = Gateway::start().await;
    let (status, alice) = gw.get("/v1/tenants/acme/users/alice").await;
    assert_eq!(
        (status, alice["name"].clone()),
        (200, json!("tenants/acme/users/alice"))
    );
    let (status, list) = gw.get("/v1/tenants/acme/users").await;
    assert_eq!(status, 200);
    assert!(!list["users"].as_array().unwrap().is_empty());
    let (status, created) = gw
        .post(
            "/v1/tenants/globex/users?userId=dave",
            json!({"displayName": "Dave", "email": "dave@globex.test"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["name"], "tenants/globex/users/dave");
    let (status, _) = gw.get("/v1/tenants/globex/users/dave").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_receives_the_ids_and_its_deadline_as_metadata() {
    let gw = Gateway::start().await;
    let request = gw
        .client
        .get(gw.url("/v1/headers"))
        .header("x-request-id", "r-1")
        .header("x-correlation-id", "c-1");
    let (status, body) = gw.send(request).await;
    assert_eq!(status, 200, "{body}");
    let metadata = &body["metadata"];
    assert_eq!(metadata["x-request-id"], "r-1");
    assert_eq!(metadata["x-correlation-id"], "c-1");
    // 5s configured by the harness, sent in grpc-timeout's units.
    let timeout = metadata["grpc-timeout"].as_str().unwrap();
    assert!(
        timeout == "5000000u" || timeout == "5000m" || timeout == "5S",
        "{timeout}"
    );
}

#[tokio::test]
async fn a_null_for_another_oneof_member_leaves_it_unset_and_a_second_value_is_refused() {
    let gw = Gateway::start().await;
    // Raw bodies: the keys in this order (`json!` would sort them).
    let post = |body: &'static str| {
        gw.client
            .post(gw.url("/v1/echo"))
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, body) = gw
        .send(post(r#"{"choiceString":"a","choiceInt":null}"#))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choiceString"], "a");
    assert!(body.get("choiceInt").is_none(), "{body}");

    let (status, body) = gw.send(post(r#"{"choiceString":"a","choiceInt":1}"#)).await;
    assert_eq!(status, 400, "{body}");
    assert_status(
        &body,
        Code::InvalidArgument,
        "invalid `choiceInt`: another field of its oneof is set",
    );
}

/// `null` for a list of `Value`s is refused: prost-reflect would send the
/// backend a list of one null, Java's runtime an empty list. The two lists
/// a client can mean are taken as written.
#[tokio::test]
async fn a_null_list_of_values_is_refused_and_its_two_meanings_are_taken_as_written() {
    let gw = Gateway::start().await;
    for field in ["repeatedValue", "repeatedNull"] {
        let (status, body) = gw.post("/v1/echo", json!({ field: null })).await;
        assert_eq!(status, 400, "{body}");
        assert_status(
            &body,
            Code::InvalidArgument,
            &format!("invalid `{field}`: null is no list here: send [] for none, or [null] for one null value"),
        );
        let violation = &body["details"][0]["fieldViolations"][0];
        assert_eq!(violation["field"], field, "{body}");
        let (status, body) = gw.post("/v1/echo", json!({ field: [null] })).await;
        assert_eq!(status, 200, "{body}");
        // A `NullValue` prints as `null` too.
        assert_eq!(body[field], json!([null]), "{body}");
        let (status, body) = gw.post("/v1/echo", json!({ field: [] })).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get(field).is_none(), "{body}");
    }
    // Any other list's `null` is its default, the empty list.
    let (status, body) = gw
        .post(
            "/v1/echo",
            json!({ "repeatedString": null, "stringValue": "x" }),
        )
        .await;
    assert_eq!((status, body), (200, json!({ "stringValue": "x" })));
}
