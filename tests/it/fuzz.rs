//! Fuzz targets for every parser of user and vendor input, as proptest
//! properties: none may panic, whatever the input. The seed corpora in
//! `tests/data/fuzz/` (inputs that once broke a parser, or nearly) run on
//! every test run; the generated cases run 256 times by default and for
//! minutes with `PROPTEST_CASES=200000 cargo test fuzz::`. Failures
//! proptest finds are kept in `proptest-regressions/` and replayed first.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;

fn corpus(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_.]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn parse_toml(text: &str) {
    let _ = ferry::project::Project::parse(
        Path::new("p"),
        Path::new("p/ferry.toml"),
        text,
        &Default::default(),
        None,
    );
}

const STARTER: &str = include_str!("../../ferry.toml");

#[test]
fn seed_corpora_parse_without_panics() {
    let now = std::time::SystemTime::now();
    for v in corpus("retry_after.txt") {
        let _ = ferry::http::parse_retry_after(&v, now);
    }
    for v in corpus("link_headers.txt") {
        let _ = ferry::extract::rest::next_link(&v);
    }
    for v in corpus("signature_headers.txt") {
        for preset in ["stripe", "typeform", "hubspot"] {
            verify(preset, &v, &v, b"{}");
        }
    }
    parse_toml(STARTER);
}

fn verify(preset: &str, sig: &str, ts: &str, body: &[u8]) {
    use ferry::extract::config::{WebhookPreset, WebhookSpec};
    let preset = match preset {
        "stripe" => WebhookPreset::Stripe,
        "typeform" => WebhookPreset::Typeform,
        _ => WebhookPreset::Hubspot,
    };
    let spec = WebhookSpec {
        name: "w".into(),
        preset,
        secret: ferry::project::Secret::new("s"),
        max_body_bytes: 1 << 20,
        tolerance_seconds: 300,
        public_url: Some("https://x.io/webhooks/w".into()),
        reconcile: None,
    };
    let mut h = axum::http::HeaderMap::new();
    for name in [
        "stripe-signature",
        "typeform-signature",
        "x-hubspot-signature-v3",
    ] {
        if let Ok(v) = axum::http::HeaderValue::from_str(sig) {
            h.insert(name, v);
        }
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(ts) {
        h.insert("x-hubspot-request-timestamp", v);
    }
    let now = chrono::Utc::now();
    let _ =
        ferry::extract::webhook::verify(&spec, "POST", "https://x.io/webhooks/w", &h, body, now);
    let _ = ferry::extract::webhook::envelopes(&spec, body, now);
}

proptest! {
    #[test]
    fn ferry_toml_never_panics(text in "\\PC{0,200}") {
        parse_toml(&text);
    }

    /// The starter project's ferry.toml with one slice replaced by junk:
    /// mostly valid TOML, so the parser goes deep.
    #[test]
    fn mutated_ferry_toml_never_panics(at in 0usize..4000, len in 0usize..40, junk in "\\PC{0,20}") {
        let at = STARTER.char_indices().map(|(i, _)| i).nth(at % STARTER.chars().count()).unwrap_or(0);
        let end = STARTER[at..].char_indices().map(|(i, _)| at + i).nth(len).unwrap_or(STARTER.len());
        let text = format!("{}{junk}{}", &STARTER[..at], &STARTER[end..]);
        parse_toml(&text);
    }

    #[test]
    fn json_flattening_never_panics(records in prop::collection::vec(json(), 0..6)) {
        let objects: Vec<serde_json::Map<String, Value>> = records
            .into_iter()
            .map(|v| match v {
                Value::Object(m) => m,
                other => [("v".to_string(), other)].into_iter().collect(),
            })
            .collect();
        let _ = ferry::lake::json::to_batch(objects);
    }

    #[test]
    fn page_decoding_never_panics(text in "\\PC{0,120}", records in prop::collection::vec(json(), 0..6)) {
        let after = |a: &Value, b: &Value| ferry::extract::cursor_after(a, b);
        let _ = ferry::lake::json::decode_records(&text, None);
        let page = Value::Array(records).to_string();
        let _ = ferry::lake::json::decode_records(&page, Some(("a.b", &after)));
        let _ = ferry::lake::json::decode_records(&page, Some(("a", &after)));
        // Escapes a strict parser refuses, spliced in anywhere.
        for text in [text.clone(), page.clone()] {
            for cut in [text.len() / 2, text.len().saturating_sub(2)] {
                if let (Some(a), Some(b)) = (text.get(..cut), text.get(cut..)) {
                    for bad in ["\\ud800", "\\udc00\\u", "1e400", "\\"] {
                        let spliced = format!("{a}{bad}{b}");
                        let _ = ferry::lake::json::decode_records_lenient(&spliced, Some(("a", &after)));
                    }
                }
            }
        }
        for body in [text.clone(), format!("{{\"results\":{page},\"paging\":{text}}}")] {
            let body = bytes::Bytes::from(body);
            let _ = ferry::http::split_at(&body, "results");
            let _ = ferry::http::split_at(&body, "");
            let _ = ferry::http::split_at(&body, "data.items");
        }
        let mut lines = ferry::lake::json::Lines::new();
        let _ = lines.push(&text);
        let _ = lines.finish();
    }

    #[test]
    fn csv_reading_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), delimiter in prop::sample::select(vec![b',', b';', b'\t', b'|'])) {
        let _ = ferry::extract::files::parse_csv("f.csv", &bytes, delimiter, &[]);
        let _ = ferry::extract::files::parse_jsonl("f.jsonl", &bytes);
    }

    #[test]
    fn webhook_signature_headers_never_panic(sig in "\\PC{0,80}", ts in "[0-9a-z-]{0,24}", body in prop::collection::vec(any::<u8>(), 0..120)) {
        for preset in ["stripe", "typeform", "hubspot"] {
            verify(preset, &sig, &ts, &body);
        }
    }

    /// A signed body loses nothing: each of a HubSpot array's elements, or
    /// the one body of any other, is an event or a quarantined row.
    #[test]
    fn a_signed_webhook_body_is_all_events_or_quarantined(body in json(), garble in any::<bool>()) {
        use ferry::extract::config::{WebhookPreset, WebhookSpec};
        let mut text = body.to_string().into_bytes();
        if garble {
            text.truncate(text.len() / 2);
            text.push(0xff);
        }
        for preset in [WebhookPreset::Hubspot, WebhookPreset::Stripe, WebhookPreset::Typeform] {
            let spec = WebhookSpec {
                name: "w".into(),
                preset,
                secret: ferry::project::Secret::new("s"),
                max_body_bytes: 1 << 20,
                tolerance_seconds: 300,
                public_url: None,
                reconcile: None,
            };
            let got = ferry::extract::webhook::envelopes(&spec, &text, chrono::Utc::now());
            let parts = match (&body, preset, garble) {
                (Value::Array(a), WebhookPreset::Hubspot, false) => a.len(),
                _ => 1,
            };
            prop_assert_eq!(got.events.len() + got.rejected.len(), parts, "{:?}: {}", preset, String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn webhook_bodies_never_panic(body in json()) {
        let text = body.to_string();
        for preset in ["stripe", "typeform", "hubspot"] {
            verify(preset, "t=1,v1=00", "1", text.as_bytes());
        }
    }

    #[test]
    fn link_headers_never_panic(header in "\\PC{0,120}") {
        let _ = ferry::extract::rest::next_link(&header);
    }

    #[test]
    fn rest_cursors_never_panic(v in json(), margin in any::<u64>()) {
        let _ = ferry::extract::rest::capped_cursor(v, chrono::Utc::now(), margin);
    }
}
