//! The canonical form against RFC 8785's own test cases: the number table of
//! its Appendix B, the reference implementation's test files (`rfc8785/input`
//! and `rfc8785/output`, copied from cyberphone/json-canonicalization,
//! Apache-2.0), and 2,000 doubles as ECMAScript writes them
//! (`rfc8785/numbers.txt`, made by `node rfc8785/numbers.mjs`).

use std::path::Path;

use registry_signing::canonical;
use serde_json::Value;

fn fixture(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rfc8785")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn number(bits: u64) -> String {
    canonical::to_string(&f64::from_bits(bits)).unwrap()
}

#[test]
fn appendix_b_numbers() {
    for (bits, expected) in [
        (0x0000_0000_0000_0000, "0"),
        (0x8000_0000_0000_0000, "0"),
        (0x0000_0000_0000_0001, "5e-324"),
        (0x8000_0000_0000_0001, "-5e-324"),
        (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
        (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
        (0x4340_0000_0000_0000, "9007199254740992"),
        (0xc340_0000_0000_0000, "-9007199254740992"),
        (0x4430_0000_0000_0000, "295147905179352830000"),
        (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
        (0x44b5_2d02_c7e1_4af6, "1e+23"),
        (0x44b5_2d02_c7e1_4af7, "1.0000000000000001e+23"),
        (0x444b_1ae4_d6e2_ef4e, "999999999999999700000"),
        (0x444b_1ae4_d6e2_ef4f, "999999999999999900000"),
        (0x444b_1ae4_d6e2_ef50, "1e+21"),
        (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
        (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
        (0x41b3_de43_5555_5553, "333333333.3333332"),
        (0x41b3_de43_5555_5554, "333333333.33333325"),
        (0x41b3_de43_5555_5555, "333333333.3333333"),
        (0x41b3_de43_5555_5556, "333333333.3333334"),
        (0x41b3_de43_5555_5557, "333333333.33333343"),
        (0xbecb_f647_612f_3696, "-0.0000033333333333333333"),
        (0x4314_3ff3_c1cb_0959, "1424953923781206.2"),
    ] {
        assert_eq!(number(bits), expected, "{bits:#018x}");
    }
    for not_a_number in [0x7fff_ffff_ffff_ffff, 0x7ff0_0000_0000_0000] {
        assert!(canonical::to_string(&f64::from_bits(not_a_number)).is_err());
    }
}

#[test]
fn doubles_as_ecmascript_writes_them() {
    let numbers = fixture("numbers.txt");
    let mut checked = 0;
    for line in numbers.lines() {
        let (bits, expected) = line.split_once(' ').expect("bits and text");
        let bits = u64::from_str_radix(bits, 16).unwrap();
        assert_eq!(number(bits), expected, "{bits:#018x}");
        // Parsed back, the text is the same double: what an agent reads is
        // what was signed.
        let parsed: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(parsed.as_f64().map(f64::to_bits), Some(bits), "{expected}");
        checked += 1;
    }
    assert_eq!(checked, 2000);
}

#[test]
fn the_reference_test_files() {
    for name in [
        "arrays",
        "french",
        "structures",
        "unicode",
        "values",
        "weird",
    ] {
        let input: Value = serde_json::from_str(&fixture(&format!("input/{name}.json"))).unwrap();
        let expected = fixture(&format!("output/{name}.json"));
        assert_eq!(canonical::to_string(&input).unwrap(), expected, "{name}");
    }
}
