//! Protobuf JSON through the published descriptors: the shape grpcurl prints
//! (lowerCamelCase names, 64-bit integers as strings, defaults omitted), for
//! command lines that print messages and the console's JSON API, which also
//! reads requests in it (either field name spelling, unknown fields refused).

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::FILE_DESCRIPTOR_SET;

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("the descriptor set does not decode: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("no descriptor for {0}")]
    Unknown(String),
    #[error("cannot re-decode {name}: {source}")]
    Decode {
        name: String,
        source: prost::DecodeError,
    },
    #[error(transparent)]
    Serialize(#[from] serde_json::Error),
    /// A request that is not valid protobuf JSON for its message; `field` is
    /// the path to the offending value (`port`, `sources[2]`), empty when the
    /// document itself is malformed.
    #[error("{message}")]
    Parse { field: String, message: String },
}

pub struct ProtoJson(DescriptorPool);

impl ProtoJson {
    pub fn new() -> Result<Self, JsonError> {
        Ok(Self(DescriptorPool::decode(FILE_DESCRIPTOR_SET)?))
    }

    /// `message`, of type `cassette.firewall.v1.<name>`, as one line of JSON.
    pub fn to_string(&self, name: &str, message: &impl Message) -> Result<String, JsonError> {
        let full_name = format!("cassette.firewall.v1.{name}");
        let descriptor = self
            .0
            .get_message_by_name(&full_name)
            .ok_or_else(|| JsonError::Unknown(full_name.clone()))?;
        let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .map_err(|source| JsonError::Decode {
                name: full_name,
                source,
            })?;
        Ok(serde_json::to_string(&dynamic)?)
    }

    /// Parses `json` as a `cassette.firewall.v1.<name>` message.
    pub fn from_json<T: Message + Default>(&self, name: &str, json: &[u8]) -> Result<T, JsonError> {
        let full_name = format!("cassette.firewall.v1.{name}");
        let descriptor = self
            .0
            .get_message_by_name(&full_name)
            .ok_or_else(|| JsonError::Unknown(full_name.clone()))?;
        let mut track = serde_path_to_error::Track::new();
        let mut reader = serde_json::Deserializer::from_slice(json);
        let parsed = DynamicMessage::deserialize(
            descriptor,
            serde_path_to_error::Deserializer::new(&mut reader, &mut track),
        )
        .and_then(|message| reader.end().map(|()| message));
        let message = parsed.map_err(|error| {
            let field = track.path().to_string();
            // serde_json's position is in the document the caller sent after
            // it was merged with the path's ids: not worth showing.
            let text = error.to_string();
            let text = text
                .rfind(" at line ")
                .map_or(text.as_str(), |at| &text[..at]);
            match field.as_str() {
                "." | "" => JsonError::Parse {
                    field: String::new(),
                    message: format!("is not a valid {name}: {text}"),
                },
                _ => JsonError::Parse {
                    field,
                    message: format!("is not a valid value: {text}"),
                },
            }
        })?;
        message
            .transcode_to::<T>()
            .map_err(|source| JsonError::Decode {
                name: full_name,
                source,
            })
    }
}
