//! The simulated fleet's names and messages: agent ids, groups, source
//! addresses, the registration body, and the pushed message with its marker.

use std::net::Ipv4Addr;

/// The id of the agent with global index `index`.
pub(crate) fn agent_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:06}")
}

/// The group of the agent with global index `index` when the fleet has `groups` groups.
pub(crate) fn group_of(index: usize, groups: usize) -> usize {
    index % groups.max(1)
}

/// The name of group number `group`.
pub(crate) fn group_name(prefix: &str, group: usize) -> String {
    format!("{prefix}group-{group}")
}

/// The loopback source address of stream `index` when streams are spread over
/// `127.0.0.1 ..= 127.0.0.count`.
pub(crate) fn source_ip(index: usize, count: usize) -> Ipv4Addr {
    let count = count.clamp(1, 254);
    let last = u8::try_from(1 + index % count).unwrap_or(1);
    Ipv4Addr::new(127, 0, 0, last)
}

/// The registration body of agent `index`.
pub(crate) fn registration_body(prefix: &str, index: usize, groups: usize) -> Vec<u8> {
    serde_json::json!({
        "agentId": agent_id(prefix, index),
        "name": "bench-agent",
        "group": group_name(prefix, group_of(index, groups)),
        "version": "1.0.0",
        "routeIds": ["route-1", "route-2"],
        "capabilities": ["deep-trace", "replay"],
    })
    .to_string()
    .into_bytes()
}

/// The JSON object pushed as push number `push`: `{"push":K,"pad":"xxx"}`,
/// padded so that it is `size` bytes long (or as short as it can be).
pub(crate) fn marked_message(push: u32, size: usize) -> String {
    let bare = format!("{{\"push\":{push},\"pad\":\"\"}}");
    let pad = size.saturating_sub(bare.len());
    format!("{{\"push\":{push},\"pad\":\"{}\"}}", "x".repeat(pad))
}

/// The body of a command request whose payload is the marked message.
pub(crate) fn command_body(kind: &str, push: u32, payload_size: usize) -> Vec<u8> {
    format!(
        "{{\"type\":\"{kind}\",\"payload\":{}}}",
        marked_message(push, payload_size)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_messages_have_the_asked_size() {
        assert_eq!(marked_message(3, 300).len(), 300);
        assert_eq!(marked_message(12, 5), "{\"push\":12,\"pad\":\"\"}");
        let body: serde_json::Value =
            serde_json::from_slice(&command_body("replay", 1, 64)).unwrap();
        assert_eq!(body["payload"]["push"], 1);
    }

    #[test]
    fn sources_cycle_over_loopback() {
        assert_eq!(source_ip(0, 4), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(5, 4), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(7, 1), Ipv4Addr::LOCALHOST);
    }
}
