//! Wire types of the Stella agent protocol (`stella.agent.v1`), generated from
//! `proto/stella/agent/v1/agent.proto`. Only protocol definitions live here: domain types
//! are converted at the edges (the control plane's gateway and `agent-core`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `stella.agent.v1`: the agent gateway service and its messages.
pub mod agent {
    /// Version 1 of the agent protocol.
    pub mod v1 {
        tonic::include_proto!("stella.agent.v1");
    }
}

pub use agent::v1;

/// The prost codec with 1 KiB initial encode/decode buffers instead of tonic's 8 KiB.
///
/// A control plane holds one long-lived stream per agent, and each stream keeps one
/// buffer per direction for its whole life; agent messages are small (a heartbeat is a
/// few bytes), and a buffer still grows for a large message. Measured with `cargo xtask
/// bench agents`: about 6 KiB less server memory per agent.
#[derive(Debug)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

/// Initial buffer size, and the size after which encoding yields.
const BUFFER_SETTINGS: (usize, usize) = (1024, 32 * 1024);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(settings())
    }
}

fn settings() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(BUFFER_SETTINGS.0, BUFFER_SETTINGS.1)
}
