//! The `session.update` callbridge-core writes, for agents of every shape, against the GA
//! client schema: valid, and free of beta-interface fields.

use callbridge_core::openai::session::{encode_session_update, AgentSettings, TurnDetection};
use callbridge_testkit::schema::{beta_fields, SchemaValidator};
use serde_json::Value;

#[test]
fn session_updates_of_every_shape_are_valid_ga_client_events() {
    let agents = [
        AgentSettings::protocol_example(),
        AgentSettings::default(),
        // Everything optional off.
        AgentSettings {
            transcription_model: None,
            language: Some("ja".to_owned()),
            noise_reduction: None,
            tools: Vec::new(),
            speed: None,
            ..AgentSettings::protocol_example()
        },
        AgentSettings {
            language: None,
            ..AgentSettings::protocol_example()
        },
        AgentSettings {
            speed: Some(1.25),
            noise_reduction: Some("far_field".to_owned()),
            turn_detection: TurnDetection {
                threshold: 0.8,
                prefix_padding_ms: 200,
                silence_duration_ms: 700,
            },
            ..AgentSettings::protocol_example()
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
