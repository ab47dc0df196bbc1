//! Key handling against published vectors: RFC 8032's Ed25519 test vectors
//! (seed to public key to signature), RFC 8410's example key in PEM, and a key
//! file made by `openssl genpkey -algorithm ed25519` (`.ci/run` installs
//! openssl where it is missing).

use std::process::Command;

use registry_signing::{KeyError, PublicKey, ServerKey};

fn hex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

/// RFC 8032 section 7.1: secret key, public key, message, signature.
const RFC_8032: [(&str, &str, &str, &str); 4] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155
         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da
         085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac
         18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        // TEST SHA(abc): the SHA-512 of "abc".
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a
         2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589
         09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
];

#[test]
fn rfc_8032_test_vectors() {
    for (secret, public, message, signature) in RFC_8032 {
        let key = ServerKey::from_seed(&hex(secret)).unwrap();
        let public_key = key.public_key();
        assert_eq!(public_key.to_bytes().to_vec(), hex(public), "{secret}");
        let signed = key.sign(&hex(message));
        assert_eq!(signed.to_vec(), hex(signature), "{secret}");
        assert!(public_key.verifies(&hex(message), &signed));
        let mut tampered = signed;
        tampered[0] ^= 1;
        assert!(!public_key.verifies(&hex(message), &tampered));
        // What the registration answer carries, and back.
        let base64 = public_key.to_base64();
        assert_eq!(base64.len(), 44, "32 bytes with padding: {base64}");
        assert!(base64.ends_with('='));
        assert_eq!(PublicKey::from_base64(&base64).unwrap(), public_key);
    }
}

#[test]
fn a_stored_seed_and_a_pem_document_give_the_same_key() {
    let key = ServerKey::generate().unwrap();
    let from_seed = ServerKey::from_seed(&key.seed()).unwrap();
    assert_eq!(from_seed.public_key(), key.public_key());
    let from_pem = ServerKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
    assert_eq!(from_pem.public_key(), key.public_key());
    assert_ne!(
        ServerKey::generate().unwrap().public_key(),
        key.public_key()
    );
    assert!(!format!("{key:?}").contains(&format!("{:?}", key.seed().as_slice())));
}

#[test]
fn rfc_8410_example_key() {
    // RFC 8410 section 10.3, and its public key from section 10.1.
    let pem = "-----BEGIN PRIVATE KEY-----\n\
               MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
               -----END PRIVATE KEY-----\n";
    let key = ServerKey::from_pkcs8_pem(pem).unwrap();
    assert_eq!(
        key.public_key().to_bytes().to_vec(),
        hex("19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
    );
}

#[test]
fn what_is_not_an_unencrypted_ed25519_key_is_refused() {
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIGb\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert_eq!(
        ServerKey::from_pkcs8_pem(encrypted).unwrap_err(),
        KeyError::Encrypted
    );
    // An X25519 key: PKCS#8, right length, another algorithm.
    let x25519 = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VuBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                  -----END PRIVATE KEY-----\n";
    for pem in [
        "",
        "not a key",
        x25519,
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    ] {
        assert!(
            matches!(
                ServerKey::from_pkcs8_pem(pem),
                Err(KeyError::NotPkcs8Ed25519(_))
            ),
            "{pem:?}"
        );
    }
    assert_eq!(
        ServerKey::from_seed(&[0; 31]).unwrap_err(),
        KeyError::WrongLength { found: 31 }
    );
    assert!(PublicKey::from_base64("not base64!").is_err());
    assert!(PublicKey::from_base64("AAAA").is_err());
}

#[test]
fn a_key_file_made_by_openssl() {
    let dir = std::env::temp_dir().join(format!("registry-signing-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("signing.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_file)
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(made.success());
    // openssl's own idea of the public key: the last 32 bytes of its DER form.
    let public_der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(public_der.status.success());
    let pem = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let key = ServerKey::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(
        key.public_key().to_bytes().as_slice(),
        &public_der.stdout[public_der.stdout.len() - 32..]
    );
}
