//! Signed commands (SPEC 12) as an agent checks them: every event's data ends
//! with a `signature` that verifies with the registration answer's
//! `serverPublicKey` (with `registry-signing`, the crate the SDK verifies
//! with), over the canonical form of the rest; a change of agent, expiry or
//! payload breaks it; a key file made by openssl is the key used; payload
//! numbers beyond ±2^53 are refused.

use std::process::Command;

use registry_signing::{PublicKey, VerifyError, canonical};
use registry_tests::{TestServer, assert_problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SIGNATURE: &str = ",\"signature\":\"";

/// Registers `agent_id` in `group`; returns the key its commands verify with.
async fn register(server: &TestServer, agent_id: &str, group: &str) -> PublicKey {
    let (status, body) = server.register(agent_id, group).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key = body["serverPublicKey"].as_str().expect("a serverPublicKey");
    PublicKey::from_base64(key).expect("standard base64 of 32 bytes")
}

#[tokio::test]
async fn every_command_event_is_signed_last_over_its_canonical_form() {
    let server = TestServer::start().await;
    let key = register(&server, "sig-1", "signers").await;
    let mut stream = server.open_stream("sig-1").await;
    let (status, _) = server
        .send(
            "sig-1",
            "config-update",
            json!({"sampling": 0.5, "é": [1.0, "x\u{1}"], "a": {"z": null, "b": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let group = server
        .post_json(
            "/api/v1/agents/groups/signers/commands",
            &json!({"type": "deep-trace", "payload": {"routeId": "r-1"}}),
        )
        .await;
    assert_eq!(group.status(), StatusCode::ACCEPTED);
    let fleet = server
        .post_json("/api/v1/agents/commands", &json!({"type": "replay"}))
        .await;
    assert_eq!(fleet.status(), StatusCode::ACCEPTED);

    for kind in ["config-update", "deep-trace", "replay"] {
        let event = stream.next_event().await.expect("an event");
        assert_eq!(event.event, kind);
        assert_eq!(key.verify_data(&event.data), Ok(()), "{}", event.data);
        // `signature` is the last member: standard base64 of 64 bytes.
        let at = event.data.rfind(SIGNATURE).expect("a signature member");
        let signature = &event.data[at + SIGNATURE.len()..];
        assert!(signature.ends_with("\"}"), "{}", event.data);
        assert_eq!(signature.len(), 88 + 2, "{signature}");
        // The rest is the canonical form, byte for byte: what was signed.
        let unsigned = format!("{}}}", &event.data[..at]);
        let value: Value = serde_json::from_str(&unsigned).expect("JSON");
        assert_eq!(canonical::to_string(&value).unwrap(), unsigned);
        assert_eq!(value["agentId"], "sig-1");
    }
}

#[tokio::test]
async fn a_signature_is_worth_nothing_for_another_agent_a_later_expiry_or_another_payload() {
    let server = TestServer::start().await;
    let key = register(&server, "sig-1", "signers").await;
    let mut stream = server.open_stream("sig-1").await;
    server
        .send("sig-1", "config-update", json!({"level": "debug"}))
        .await;
    let data = stream.next_event().await.expect("an event").data;
    assert_eq!(key.verify_data(&data), Ok(()));

    let value: Value = serde_json::from_str(&data).unwrap();
    let expires_at = value["expiresAt"].as_str().unwrap();
    for (from, to) in [
        ("\"agentId\":\"sig-1\"", "\"agentId\":\"sig-2\""),
        (expires_at, "2999-01-01T00:00:00.000Z"),
        ("\"level\":\"debug\"", "\"level\":\"trace\""),
    ] {
        let forged = data.replacen(from, to, 1);
        assert_ne!(forged, data);
        assert_eq!(
            key.verify_data(&forged),
            Err(VerifyError::Mismatch),
            "{forged}"
        );
    }
}

#[tokio::test]
async fn a_payload_number_beyond_two_to_the_53_is_400_naming_where_it_is() {
    let server = TestServer::start().await;
    register(&server, "sig-1", "signers").await;
    let too_big =
        json!({"type": "config-update", "payload": {"limits": [1, 9_007_199_254_740_993_u64]}});
    for path in [
        "/api/v1/agents/sig-1/commands",
        "/api/v1/agents/groups/signers/commands",
        "/api/v1/agents/commands",
    ] {
        let problem = assert_problem(
            server.post_json(path, &too_big).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("payload.limits[1]"), "{path}: {detail}");
        assert!(detail.contains("2^53"), "{path}: {detail}");
    }
    let (status, sent) = server
        .send(
            "sig-1",
            "config-update",
            json!({"n": 9_007_199_254_740_992_u64}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "2^53 itself is kept: {sent}");
    let commands: Value = server
        .get("/api/v1/agents/sig-1/commands")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(commands.as_array().map(Vec::len), Some(1), "{commands}");
}

#[tokio::test]
async fn a_key_file_made_by_openssl_is_the_key_commands_are_signed_with() {
    let dir = std::env::temp_dir().join(format!("registry-signing-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("signing.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_file)
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(made.success());
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(der.status.success());
    let expected = PublicKey::from_bytes(&der.stdout[der.stdout.len() - 32..]).unwrap();

    let path = key_file.to_str().unwrap().to_owned();
    let server = TestServer::start_with(|config| config.signing.key_file = path).await;
    let key = register(&server, "sig-1", "signers").await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(key, expected);
    let mut stream = server.open_stream("sig-1").await;
    server.send("sig-1", "replay", json!({})).await;
    let event = stream.next_event().await.expect("an event");
    assert_eq!(expected.verify_data(&event.data), Ok(()));
}

#[tokio::test]
async fn with_the_memory_engine_each_start_makes_a_new_key_kept_while_it_runs() {
    let first = TestServer::start().await;
    let key = register(&first, "sig-1", "signers").await;
    let (_, again) = first.register("sig-1", "signers").await;
    assert_eq!(
        again["serverPublicKey"].as_str(),
        Some(key.to_base64().as_str())
    );
    first.shutdown().await.unwrap();
    let second = TestServer::start().await;
    assert_ne!(register(&second, "sig-1", "signers").await, key);
}

#[tokio::test]
async fn with_signing_off_events_carry_no_signature_and_the_key_is_null() {
    let server = TestServer::start_with(|config| config.signing.enabled = false).await;
    let (_, body) = server.register("sig-1", "signers").await;
    assert_eq!(body.get("serverPublicKey"), Some(&Value::Null), "{body}");
    let mut stream = server.open_stream("sig-1").await;
    server.send("sig-1", "replay", json!({"n": 1})).await;
    let data = stream.next_event().await.expect("an event").data;
    let value: Value = serde_json::from_str(&data).unwrap();
    assert!(value.get("signature").is_none(), "{data}");
    assert_eq!(canonical::to_string(&value).unwrap(), data);
}
