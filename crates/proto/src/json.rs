//! Protobuf JSON through the published descriptors: the shape grpcurl prints
//! (lowerCamelCase names, 64-bit integers as strings, defaults omitted), for
//! command lines that print messages.

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
}
