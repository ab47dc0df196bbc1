//! The signing key as an operator meets it (SPEC 12), with the built binary:
//! generated at the first start and kept in the embedded file, so a restart,
//! even a SIGKILL, keeps it; a `signing.key_file` wins over it; a key file
//! that is not an unencrypted PKCS#8 Ed25519 key stops the start with exit 2
//! naming `signing.key_file`.

mod common;

use std::net::SocketAddr;

use common::*;
use registry_signing::ServerKey;

/// The `serverPublicKey` a registration answers with.
fn server_public_key(addr: SocketAddr) -> String {
    let (status, body) = register(addr, "a-1");
    assert!(status == 200 || status == 201, "{body}");
    body["serverPublicKey"]
        .as_str()
        .unwrap_or_else(|| panic!("a serverPublicKey: {body}"))
        .to_owned()
}

#[test]
fn the_generated_key_survives_a_sigkill_and_a_restart_and_a_key_file_wins_over_it() {
    let (process, addr) = Process::serve(WorkDir::new(), &[], &[]);
    let generated = server_public_key(addr);
    let dir = process.kill();

    let (process, addr) = Process::serve(dir, &[], &[]);
    assert_eq!(
        server_public_key(addr),
        generated,
        "the same key after a SIGKILL"
    );
    let dir = process.stop();

    let file_key = ServerKey::generate().unwrap();
    dir.write("keys/signing.pem", &file_key.to_pkcs8_pem());
    let (process, addr) = Process::serve(
        dir,
        &[],
        &[("REGISTRY_SIGNING__KEY_FILE", "keys/signing.pem")],
    );
    assert_eq!(server_public_key(addr), file_key.public_key().to_base64());
    let dir = process.stop();

    // The stored key was left as it was: without the file, it signs again.
    let (process, addr) = Process::serve(dir, &[], &[]);
    assert_eq!(server_public_key(addr), generated);
    process.terminate();
}

#[test]
fn a_key_file_that_is_not_an_unencrypted_ed25519_key_exits_2_naming_signing_key_file() {
    let x25519 = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VuBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                  -----END PRIVATE KEY-----\n";
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\n\
                     MIGbMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhTm9t5Yz7oQwICCAAw\n\
                     -----END ENCRYPTED PRIVATE KEY-----\n";
    for contents in [None, Some("not a key\n"), Some(x25519), Some(encrypted)] {
        let dir = WorkDir::new();
        if let Some(contents) = contents {
            dir.write("signing.pem", contents);
        }
        let env = [
            ("REGISTRY_SIGNING__KEY_FILE", "signing.pem"),
            ("REGISTRY_STORAGE__ENGINE", "memory"),
        ];
        let mut process = Process::spawn(dir, &["--bind", "127.0.0.1:0"], &env);
        let status = process.wait_exit();
        let log = process.log();
        assert_eq!(status.code(), Some(2), "{contents:?}: {log}");
        assert!(log.contains("signing.key_file"), "{contents:?}: {log}");
        assert!(log.contains("signing.pem"), "{contents:?}: {log}");
        assert!(!log.contains("listening on"), "{contents:?}: {log}");
    }
}
