//! The first thing a user tries: register, stream, push, ack.

use registry_tests::TestServer;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn an_agent_registers_streams_receives_a_command_and_acknowledges_it() {
    let server = TestServer::start().await;
    let (status, body) = server.register("order-7f3a", "order-service-prod").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["resumed"], false);

    let mut stream = server.open_stream("order-7f3a").await;
    let (status, command) = server
        .send("order-7f3a", "deep-trace", json!({"routeId": "route-1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(command["status"], "DELIVERED");

    let event = stream.next_event().await.expect("an event");
    assert_eq!(event.event, "deep-trace");
    assert_eq!(event.id, command["commandId"].as_str().unwrap());
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["payload"], json!({"routeId": "route-1"}));

    let ack = server
        .post_empty(&format!(
            "/api/v1/agents/order-7f3a/commands/{}/ack",
            event.id
        ))
        .await;
    assert_eq!(ack.status(), StatusCode::OK);
    let ack: serde_json::Value = ack.json().await.unwrap();
    assert_eq!(ack["status"], "ACKNOWLEDGED");
    assert_eq!(ack["result"], "SUCCESS");
    server.shutdown().await.unwrap();
}
