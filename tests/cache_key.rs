//! The prompt cache key: every field that can change the answer changes the key; key order
//! and the few ignored fields do not.

use proptest::prelude::*;
use reasonq::cache::{CacheKey, IGNORED_FIELDS};
use serde_json::{json, Value};

const BASE: &str = "https://api.x.ai/v1";
const ENDPOINT: &str = "/chat/completions";

fn key(body: &Value) -> CacheKey {
    CacheKey::for_request(BASE, ENDPOINT, body)
}

fn typical() -> Value {
    json!({
        "model": "grok-4",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}
        ],
        "temperature": 0,
        "max_tokens": 64,
        "stop": ["\n", "END"],
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    })
}

/// Applies `edit` to a copy of the typical body.
fn edited(edit: impl FnOnce(&mut Value)) -> Value {
    let mut body = typical();
    edit(&mut body);
    body
}

#[test]
fn equal_bodies_with_keys_in_a_different_order_share_a_key() {
    let a = json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": true}}});
    let b = json!({"response_format": {"json_schema": {"strict": true, "name": "a"}, "type": "json_schema"},
                   "messages": [{"content": "hi", "role": "user"}], "temperature": 0, "model": "m"});
    assert_eq!(key(&a), key(&b));
}

#[test]
fn changing_any_field_changes_the_key() {
    let cases: Vec<(&str, Value)> = vec![
        ("model", edited(|b| b["model"] = json!("grok-3"))),
        ("temperature", edited(|b| b["temperature"] = json!(0.7))),
        (
            "temperature 0 vs 0.0",
            edited(|b| b["temperature"] = json!(0.0)),
        ),
        ("max_tokens", edited(|b| b["max_tokens"] = json!(65))),
        (
            "new unknown reasoning_effort",
            edited(|b| b["reasoning_effort"] = json!("high")),
        ),
        (
            "new field set to null",
            edited(|b| b["top_p"] = Value::Null),
        ),
        ("seed", edited(|b| b["seed"] = json!(1))),
        (
            "store (a side effect, not ignored)",
            edited(|b| b["store"] = json!(true)),
        ),
        (
            "nested message content",
            edited(|b| b["messages"][1]["content"][0]["text"] = json!("2+3?")),
        ),
        (
            "message role",
            edited(|b| b["messages"][0]["role"] = json!("developer")),
        ),
        (
            "message order",
            edited(|b| {
                if let Some(m) = b["messages"].as_array_mut() {
                    m.reverse();
                }
            }),
        ),
        ("stop order", edited(|b| b["stop"] = json!(["END", "\n"]))),
        (
            "nested user inside a message",
            edited(|b| b["messages"][0]["user"] = json!("x")),
        ),
        (
            "response_format",
            edited(|b| b["response_format"]["type"] = json!("text")),
        ),
        (
            "tool schema",
            edited(|b| b["tools"][0]["function"]["parameters"]["type"] = json!("array")),
        ),
        (
            "field removed",
            edited(|b| {
                if let Some(o) = b.as_object_mut() {
                    o.remove("max_tokens");
                }
            }),
        ),
        (
            "field renamed",
            edited(|b| {
                if let Some(o) = b.as_object_mut() {
                    let v = o.remove("max_tokens");
                    o.insert("max_completion_tokens".into(), v.unwrap_or(Value::Null));
                }
            }),
        ),
        (
            "string vs number",
            edited(|b| b["max_tokens"] = json!("64")),
        ),
    ];
    let original = key(&typical());
    let mut seen = std::collections::HashSet::from([original]);
    for (what, body) in &cases {
        assert!(
            seen.insert(key(body)),
            "changing {what} did not give a new key"
        );
    }
    assert_ne!(
        CacheKey::for_request("https://api.openai.com/v1", ENDPOINT, &typical()),
        original,
        "base URL"
    );
    assert_ne!(
        CacheKey::for_request(BASE, "/completions", &typical()),
        original,
        "endpoint"
    );
}

#[test]
fn ignored_fields_do_not_change_the_key() {
    let original = key(&typical());
    for field in IGNORED_FIELDS {
        for value in [json!("someone"), json!({"run": 7}), json!(null)] {
            let body = edited(|b| b[*field] = value.clone());
            assert_eq!(key(&body), original, "{field} = {value}");
        }
    }
    assert_eq!(
        IGNORED_FIELDS.len(),
        4,
        "the ignored list stays short and documented"
    );
}

#[test]
fn slashes_between_base_url_and_endpoint_do_not_matter() {
    let body = typical();
    let k = CacheKey::for_request("https://api.x.ai/v1", "/chat/completions", &body);
    assert_eq!(
        CacheKey::for_request("https://api.x.ai/v1/", "chat/completions", &body),
        k
    );
    assert_eq!(
        CacheKey::for_request("https://api.x.ai/v1//", "//chat/completions", &body),
        k
    );
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[a-z \"\\\\é]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request-like body: an object whose top-level fields are never the ignored ones.
fn body() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 1..6).prop_map(|m| {
        Value::Object(
            m.into_iter()
                .filter(|(k, _)| !IGNORED_FIELDS.contains(&k.as_str()))
                .collect(),
        )
    })
}

/// The same value with every object's fields inserted in reverse order.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

fn count_leaves(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(count_leaves).sum(),
        Value::Array(items) => items.iter().map(count_leaves).sum(),
        _ => 1,
    }
}

/// Replaces the `n`-th leaf (depth first) with a string no leaf can equal.
fn mutate_leaf(v: &mut Value, n: &mut usize) -> bool {
    match v {
        Value::Object(m) => m.values_mut().any(|v| mutate_leaf(v, n)),
        Value::Array(items) => items.iter_mut().any(|v| mutate_leaf(v, n)),
        leaf => {
            if *n == 0 {
                *leaf = Value::String(format!("mutated {leaf}"));
                true
            } else {
                *n -= 1;
                false
            }
        }
    }
}

proptest! {
    #[test]
    fn key_order_never_matters(body in body()) {
        let flipped = reversed(&body);
        prop_assert_eq!(&flipped, &body);
        prop_assert_eq!(key(&flipped), key(&body));
    }

    #[test]
    fn changing_any_leaf_anywhere_changes_the_key(body in body(), pick in any::<prop::sample::Index>()) {
        let leaves = count_leaves(&body);
        prop_assume!(leaves > 0);
        let mut changed = body.clone();
        prop_assert!(mutate_leaf(&mut changed, &mut pick.index(leaves)));
        prop_assert_ne!(key(&changed), key(&body));
    }

    #[test]
    fn adding_any_field_changes_the_key(body in body(), name in "[a-z_]{1,12}", value in json_value()) {
        prop_assume!(!IGNORED_FIELDS.contains(&name.as_str()));
        prop_assume!(body.get(&name).is_none());
        let mut changed = body.clone();
        changed[&name] = value;
        prop_assert_ne!(key(&changed), key(&body));
    }
}
