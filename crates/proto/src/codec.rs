//! The codec of every generated service and client: prost's encoding with
//! small first buffers.
//!
//! tonic gives each call an 8 KiB encode buffer and an 8 KiB decode buffer
//! for as long as it is open: on a rules service, 16 KiB for every connected
//! enforcer's Sync stream, whose messages are a few hundred bytes. These
//! start at 1 KiB and still grow to the largest message a call carries.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A call's first encode and decode buffers.
const FIRST_BUFFER_BYTES: usize = 1024;
/// tonic's: a stream encodes this much before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
