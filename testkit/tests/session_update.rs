//! The `session.update` callbridge-core writes, for agents of every shape, against the GA
//! client schema: valid, and free of beta-interface fields.

use callbridge_core::openai::session::{encode_session_update, AgentSettings, TurnDetection};
use callbridge_testkit::schema::{beta_fields, SchemaValidator};
use serde_json::{json, Value};

/// The agent of the protocol.md 5.2 example.
fn sample_agent() -> AgentSettings {
    AgentSettings {
        id: "sample".to_owned(),
        voice: "marin".to_owned(),
        instructions:
            "あなたは株式会社サンプルの電話受付です。丁寧な日本語で、短く答えてください。"
                .to_owned(),
        greeting: Some("お電話ありがとうございます。".to_owned()),
        transcription_model: Some("gpt-4o-transcribe".to_owned()),
        language: Some("ja".to_owned()),
        turn_detection: TurnDetection::default(),
        tools: vec![json!({
            "type": "function",
            "name": "lookup_order",
            "description": "注文番号から注文状況を調べる",
            "parameters": {
                "type": "object",
                "properties": { "order_id": { "type": "string", "description": "注文番号" } },
                "required": ["order_id"]
            }
        })],
        speed: None,
        noise_reduction: Some("near_field".to_owned()),
    }
}

#[test]
fn session_updates_of_every_shape_are_valid_ga_client_events() {
    let agents = [
        sample_agent(),
        AgentSettings::default(),
        // Everything optional off.
        AgentSettings {
            transcription_model: None,
            language: Some("ja".to_owned()),
            noise_reduction: None,
            tools: Vec::new(),
            speed: None,
            ..sample_agent()
        },
        AgentSettings {
            language: None,
            ..sample_agent()
        },
        AgentSettings {
            speed: Some(1.25),
            noise_reduction: Some("far_field".to_owned()),
            turn_detection: TurnDetection {
                threshold: 0.8,
                prefix_padding_ms: 200,
                silence_duration_ms: 700,
            },
            ..sample_agent()
        },
    ];
    for agent in agents {
        let mut out = Vec::new();
        encode_session_update(&mut out, "evt_session_1", "gpt-realtime", &agent);
        let value: Value = serde_json::from_slice(&out).unwrap();
        SchemaValidator::client()
            .validate(&value)
            .unwrap_or_else(|e| panic!("{e}: {value}"));
        assert_eq!(beta_fields(&value), Vec::<String>::new(), "{value}");
    }
}
