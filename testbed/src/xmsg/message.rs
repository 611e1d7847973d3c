//! An xMsg message: three frames, the topic, the serialized [`Meta`] and the payload.

use prost::Message as _;
use prost::bytes::Bytes;
use zeromq::ZmqMessage;

use super::proto::{Meta, Status};
use super::{APPLICATION_JSON, TEXT_STRING};

/// A decoded xMsg message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub meta: Meta,
    pub payload: Vec<u8>,
}

/// A multipart message that is not a valid xMsg message. The topic is kept when it could be
/// read, so that the receiver can log where the frame came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("expected 3 frames (topic, metadata, payload), got {count}")]
    FrameCount { topic: Option<String>, count: usize },
    #[error("the topic frame is not UTF-8")]
    TopicNotUtf8,
    #[error("invalid metadata frame on topic `{topic}`: {reason}")]
    Meta { topic: String, reason: String },
}

impl MessageError {
    /// The topic of the rejected message, when it could be read.
    pub fn topic(&self) -> Option<&str> {
        match self {
            MessageError::FrameCount { topic, .. } => topic.as_deref(),
            MessageError::TopicNotUtf8 => None,
            MessageError::Meta { topic, .. } => Some(topic),
        }
    }
}

impl Message {
    /// A message with a text payload, as DPE requests and replies carry.
    pub fn text(topic: &str, meta: Meta, text: &str) -> Message {
        Message { topic: topic.to_owned(), meta, payload: text.as_bytes().to_vec() }
    }

    /// Metadata of a text payload with the given status, author and sender.
    pub fn text_meta(status: Status, author: &str, sender: Option<&str>) -> Meta {
        Meta {
            author: Some(author.to_owned()),
            status: Some(status as i32),
            sender: sender.map(str::to_owned),
            ..Meta::with_data_type(TEXT_STRING)
        }
    }

    /// Metadata of a JSON payload sent by `sender`, or by nobody in particular as the C++
    /// DPE's reports are.
    pub fn json_meta(sender: Option<&str>) -> Meta {
        Meta { sender: sender.map(str::to_owned), ..Meta::with_data_type(APPLICATION_JSON) }
    }

    /// Decodes three frames.
    pub fn from_frames<F: AsRef<[u8]>>(frames: &[F]) -> Result<Message, MessageError> {
        let topic = frames
            .first()
            .map(|frame| std::str::from_utf8(frame.as_ref()).map(str::to_owned))
            .transpose()
            .map_err(|_| MessageError::TopicNotUtf8)?;
        if frames.len() != 3 {
            return Err(MessageError::FrameCount { topic, count: frames.len() });
        }
        let topic = topic.expect("three frames include a topic");
        let meta = Meta::decode(frames[1].as_ref()).map_err(|error| MessageError::Meta {
            topic: topic.clone(),
            reason: error.to_string(),
        })?;
        Ok(Message { topic, meta, payload: frames[2].as_ref().to_vec() })
    }

    /// Encodes the three frames.
    pub fn to_frames(&self) -> [Vec<u8>; 3] {
        [self.topic.as_bytes().to_vec(), self.meta.encode_to_vec(), self.payload.clone()]
    }

    /// The payload as text, with invalid UTF-8 replaced.
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The message as a ZeroMQ multipart message.
    pub fn to_zmq(&self) -> ZmqMessage {
        frames_to_zmq(self.to_frames())
    }
}

/// Builds a multipart ZeroMQ message from frames; `frames` must not be empty.
pub fn frames_to_zmq<F: Into<Vec<u8>>>(frames: impl IntoIterator<Item = F>) -> ZmqMessage {
    let frames: Vec<Bytes> = frames.into_iter().map(|frame| Bytes::from(frame.into())).collect();
    ZmqMessage::try_from(frames).expect("a message has at least one frame")
}

/// The frames of a ZeroMQ multipart message.
pub fn zmq_to_frames(message: ZmqMessage) -> Vec<Bytes> {
    message.into_vec()
}
