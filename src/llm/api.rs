//! The OpenAI endpoints a request can go to: chat completions (what memory, strategies and
//! the blackboard work on) and the others an OpenAI batch file may hold, sent as they are.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::Usage;

/// One endpoint of an OpenAI-compatible API.
/// Stored in job payloads by variant: new endpoints are added at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    #[default]
    ChatCompletions,
    Responses,
    Embeddings,
    Completions,
    Moderations,
}

impl Api {
    /// Every endpoint, in the order the docs list them.
    pub const ALL: [Api; 5] = [
        Api::ChatCompletions,
        Api::Responses,
        Api::Embeddings,
        Api::Completions,
        Api::Moderations,
    ];

    /// The `url` of a batch line (`/v1/embeddings`).
    pub fn url(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Responses => "/v1/responses",
            Api::Embeddings => "/v1/embeddings",
            Api::Completions => "/v1/completions",
            Api::Moderations => "/v1/moderations",
        }
    }

    /// The path under the base URL (`embeddings`).
    pub fn path(self) -> &'static str {
        &self.url()["/v1/".len()..]
    }

    /// The path under the base URL with its slash (`/embeddings`), as cache keys name it.
    pub fn route(self) -> &'static str {
        &self.url()["/v1".len()..]
    }

    /// The endpoint of a batch line's `url`.
    pub fn from_url(url: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.url() == url)
    }

    /// Whether the body's `model` may be left out (the configured model is filled in
    /// otherwise): OpenAI's moderations pick their own model.
    pub fn needs_model(self) -> bool {
        self != Api::Moderations
    }

    /// The body fields the endpoint cannot go without, besides `model`.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            Api::ChatCompletions => &["messages"],
            Api::Responses | Api::Embeddings | Api::Moderations => &["input"],
            Api::Completions => &["prompt"],
        }
    }
}

/// The token usage a response of `api` reports, in chat's terms: the Responses API says
/// `input_tokens`/`output_tokens`, embeddings only `prompt_tokens`, moderations nothing.
pub fn usage_of(body: &Value) -> Option<Usage> {
    let u = body.get("usage")?;
    let count = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| u.get(*n).and_then(Value::as_u64))
            .unwrap_or(0)
    };
    let prompt_tokens = count(&["prompt_tokens", "input_tokens"]);
    let completion_tokens = count(&["completion_tokens", "output_tokens"]);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: match count(&["total_tokens"]) {
            0 => prompt_tokens + completion_tokens,
            n => n,
        },
        ..Usage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_paths_and_usage() {
        for api in Api::ALL {
            assert_eq!(Api::from_url(api.url()), Some(api));
            assert_eq!(format!("/v1/{}", api.path()), api.url());
            assert_eq!(format!("/v1{}", api.route()), api.url());
        }
        assert_eq!(Api::from_url("/v1/images/generations"), None);
        let responses =
            json!({"usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}});
        let u = usage_of(&responses).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (5, 7, 12)
        );
        let embeddings = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        let u = usage_of(&embeddings).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (8, 0));
        assert!(usage_of(&json!({"results": []})).is_none());
    }
}
