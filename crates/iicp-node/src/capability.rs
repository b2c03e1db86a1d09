//! Capabilities advertised at REGISTER, derived from the model list (PROTOCOL.md §12.1,
//! §12.2 "wire reality", §8.2; seed rules `intentForModel`, `modalitiesForModel`,
//! `buildCapabilities`).
//!
//! * Every model serves `text`. A name containing `-vl-`, ending in `-vl`, or containing
//!   `vision`, `llava` or `omni` adds `image`; `audio`, `voxtral` or `omni` adds `audio`
//!   (case-insensitive). Order: text, image, audio.
//! * A model whose name contains `embed` serves `urn:iicp:intent:llm:embedding:v1`;
//!   every other model serves the node's intent.
//! * One capability entry per distinct (intent, input modalities) group, in first-seen
//!   order, models de-duplicated; an empty model list yields one entry without models.

use iicp_proto::directory::Capability;
use iicp_proto::intent::Intent;

/// The embedding intent models named `*embed*` are advertised under.
pub const EMBEDDING_INTENT: &str = "urn:iicp:intent:llm:embedding:v1";

/// Input modalities of a model, from its name: always `text`, plus `image` and `audio`
/// by the seed's name rules.
///
/// ```
/// use iicp_node::capability::modalities_for_model;
/// assert_eq!(modalities_for_model("qwen2.5-vl-7b"), ["text", "image"]);
/// assert_eq!(modalities_for_model("Qwen2.5-Omni"), ["text", "image", "audio"]);
/// assert_eq!(modalities_for_model("llama3"), ["text"]);
/// ```
pub fn modalities_for_model(model: &str) -> Vec<&'static str> {
    let m = model.to_ascii_lowercase();
    let mut out = vec!["text"];
    let image = m.contains("-vl-")
        || m.ends_with("-vl")
        || m.contains("vision")
        || m.contains("llava")
        || m.contains("omni");
    if image {
        out.push("image");
    }
    if m.contains("audio") || m.contains("voxtral") || m.contains("omni") {
        out.push("audio");
    }
    out
}

/// The intent a model is advertised under: the embedding intent for names containing
/// `embed`, else `default_intent`.
pub fn intent_for_model(model: &str, default_intent: &Intent) -> Intent {
    if model.to_ascii_lowercase().contains("embed") {
        if let Ok(embedding) = Intent::new(EMBEDDING_INTENT) {
            return embedding;
        }
    }
    default_intent.clone()
}

/// The capability list for `models` served under `intent` (seed `buildCapabilities`).
///
/// ```
/// use iicp_node::capability::build_capabilities;
/// use iicp_proto::intent::Intent;
/// let chat = Intent::new("urn:iicp:intent:llm:chat:v1").unwrap();
/// let caps = build_capabilities(&["llama3", "llava:7b", "llama3"], &chat, 4096);
/// assert_eq!(caps.len(), 2);
/// assert_eq!(caps[0].models, ["llama3"]);
/// assert_eq!(caps[1].input_modalities.as_deref(), Some(&["text".to_owned(), "image".to_owned()][..]));
/// ```
pub fn build_capabilities<S: AsRef<str>>(
    models: &[S],
    intent: &Intent,
    max_tokens: u32,
) -> Vec<Capability> {
    if models.is_empty() {
        let mut cap = Capability::llm(intent, Vec::new(), max_tokens);
        cap.input_modalities = Some(vec!["text".to_owned()]);
        return vec![cap];
    }
    let mut caps: Vec<Capability> = Vec::new();
    for model in models {
        let model = model.as_ref();
        let model_intent = intent_for_model(model, intent);
        let modalities: Vec<String> = modalities_for_model(model)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let existing = caps.iter_mut().find(|c| {
            c.intent == model_intent.as_str()
                && c.input_modalities.as_deref() == Some(&modalities[..])
        });
        match existing {
            Some(cap) => {
                if !cap.models.iter().any(|m| m == model) {
                    cap.models.push(model.to_owned());
                }
            }
            None => {
                let mut cap = Capability::llm(&model_intent, vec![model.to_owned()], max_tokens);
                cap.input_modalities = Some(modalities);
                caps.push(cap);
            }
        }
    }
    caps
}

/// Capabilities for several intents: [`build_capabilities`] per intent, merged so that
/// each (intent, modalities) group appears once.
pub fn build_capabilities_for<S: AsRef<str>>(
    models: &[S],
    intents: &[Intent],
    max_tokens: u32,
) -> Vec<Capability> {
    let mut out: Vec<Capability> = Vec::new();
    for intent in intents {
        for cap in build_capabilities(models, intent, max_tokens) {
            match out
                .iter_mut()
                .find(|c| c.intent == cap.intent && c.input_modalities == cap.input_modalities)
            {
                Some(existing) => {
                    for m in cap.models {
                        if !existing.models.contains(&m) {
                            existing.models.push(m);
                        }
                    }
                }
                None => out.push(cap),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Intent {
        Intent::new("urn:iicp:intent:llm:chat:v1").expect("intent")
    }

    #[test]
    fn modalities_table() {
        let cases: &[(&str, &[&str])] = &[
            ("llama3", &["text"]),
            ("qwen2.5-vl-7b", &["text", "image"]),
            ("qwen2.5-VL", &["text", "image"]),
            ("qwen-vl", &["text", "image"]),
            ("devlin", &["text"]),
            ("vlm-base", &["text"]),
            ("llama-3.2-vision", &["text", "image"]),
            ("llava:13b", &["text", "image"]),
            ("qwen2.5-omni-7b", &["text", "image", "audio"]),
            ("voxtral-mini", &["text", "audio"]),
            ("whisper-audio", &["text", "audio"]),
            ("", &["text"]),
        ];
        for (model, want) in cases {
            assert_eq!(modalities_for_model(model), *want, "{model}");
        }
    }

    #[test]
    fn intent_table() {
        let cases = [
            ("nomic-embed-text", EMBEDDING_INTENT),
            ("BGE-EMBEDDING", EMBEDDING_INTENT),
            ("llama3", "urn:iicp:intent:llm:chat:v1"),
        ];
        for (model, want) in cases {
            assert_eq!(intent_for_model(model, &chat()).as_str(), want, "{model}");
        }
    }

    #[test]
    fn capabilities_table() {
        let empty: [&str; 0] = [];
        let caps = build_capabilities(&empty, &chat(), 8192);
        assert_eq!(caps.len(), 1);
        assert!(caps[0].models.is_empty());
        assert_eq!(caps[0].max_tokens, Some(8192));
        assert_eq!(caps[0].input_modalities, Some(vec!["text".to_owned()]));

        let caps = build_capabilities(
            &[
                "llama3",
                "qwen-vl",
                "nomic-embed-text",
                "mistral",
                "llava",
                "llama3",
                "omni",
            ],
            &chat(),
            100,
        );
        let got: Vec<(&str, Vec<String>, Vec<String>)> = caps
            .iter()
            .map(|c| {
                (
                    c.intent.as_str(),
                    c.input_modalities.clone().unwrap_or_default(),
                    c.models.clone(),
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (
                    "urn:iicp:intent:llm:chat:v1",
                    s(&["text"]),
                    s(&["llama3", "mistral"])
                ),
                (
                    "urn:iicp:intent:llm:chat:v1",
                    s(&["text", "image"]),
                    s(&["qwen-vl", "llava"])
                ),
                (EMBEDDING_INTENT, s(&["text"]), s(&["nomic-embed-text"])),
                (
                    "urn:iicp:intent:llm:chat:v1",
                    s(&["text", "image", "audio"]),
                    s(&["omni"])
                ),
            ]
        );
        assert!(caps.iter().all(|c| c.max_tokens == Some(100)));
    }

    #[test]
    fn several_intents_merge() {
        let other = Intent::new("urn:iicp:intent:llm:completion:v1").expect("intent");
        let caps = build_capabilities_for(&["llama3", "bge-embed"], &[chat(), other], 10);
        let intents: Vec<&str> = caps.iter().map(|c| c.intent.as_str()).collect();
        assert_eq!(
            intents,
            [
                "urn:iicp:intent:llm:chat:v1",
                EMBEDDING_INTENT,
                "urn:iicp:intent:llm:completion:v1"
            ]
        );
    }
}
