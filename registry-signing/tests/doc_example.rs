//! The worked example of `docs/signing.md`, made again from RFC 8032's first
//! test key and the command it describes: the page can't drift from what the
//! code signs.

use registry_signing::{PublicKey, ServerKey, canonical};
use serde_json::json;

const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/signing.md");
    std::fs::read_to_string(path).expect("docs/signing.md")
}

/// The text of every fenced block of the page.
fn blocks(doc: &str) -> Vec<String> {
    doc.split("```")
        .skip(1)
        .step_by(2)
        .map(|block| {
            let body = block.split_once('\n').map_or("", |(_, body)| body);
            body.trim_end_matches('\n').to_owned()
        })
        .collect()
}

#[test]
fn the_worked_example_is_what_the_code_signs() {
    let seed: Vec<u8> = (0..SEED.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&SEED[at..at + 2], 16).unwrap())
        .collect();
    let key = ServerKey::from_seed(&seed).unwrap();
    // The command as the page tells it; the event's data is made as the
    // server makes it: canonical, then signed.
    let data = json!({
        "commandId": "019ab0c2-5c1e-7d4a-9a53-2f0e8f6c1b7d",
        "agentId": "order-7f3a",
        "type": "config-update",
        "payload": {"sampling": 0.5, "level": "débug", "limits": {"maxSpans": 1e3}},
        "createdAt": "2026-11-23T14:02:11.123Z",
        "expiresAt": "2026-11-23T14:03:11.123Z",
    });
    let unsigned = canonical::to_string(&data).unwrap();
    let signed = key.sign_object(&unsigned);
    let signature = signed
        .rsplit_once("\"signature\":\"")
        .map(|(_, rest)| rest.trim_end_matches("\"}"))
        .unwrap();

    let doc = doc();
    let blocks = blocks(&doc);
    let has = |text: &str| blocks.iter().any(|block| block == text);
    assert!(doc.contains(SEED));
    assert!(has(key.to_pkcs8_pem().trim_end()), "the PEM key file");
    assert!(has(&key.public_key().to_base64()), "serverPublicKey");
    assert!(has(&signed), "the event's data");
    assert!(has(&unsigned), "the canonical bytes");
    assert!(has(signature), "the signature");
    assert!(
        doc.contains(&format!(
            "these are the bytes signed, {} of them",
            unsigned.len()
        )),
        "the byte count"
    );
    assert!(doc.contains(&format!("printf '%s' '{unsigned}' > message")));
    assert!(doc.contains(&format!("echo '{signature}' | base64 -d")));
    let public = PublicKey::from_base64(&key.public_key().to_base64()).unwrap();
    assert_eq!(public.verify_data(&signed), Ok(()));
}
