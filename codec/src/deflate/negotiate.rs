//! Negotiation of permessage-deflate (RFC 7692 §5, §7.1) over `Sec-WebSocket-Extensions`.
//!
//! The header grammar is RFC 6455 §9.1 with RFC 7230 list rules: comma-separated
//! extensions, each a token followed by `; name[=value]` parameters, where a value is a
//! token or a quoted-string whose unescaped content must itself be a token. Names are
//! compared case-insensitively. Several header fields form one list.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::{CompressionLevel, WindowBits};
use crate::handshake::Request;
use crate::protocol::Role;

/// The extension's registered name.
pub const EXTENSION_NAME: &str = "permessage-deflate";

const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";

// ---------------------------------------------------------------------------------------
// The agreed parameters.

/// How one direction of a connection compresses: the sender's window and whether it keeps
/// its LZ77 window from one message to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Direction {
    /// The largest window the sender may use (and so the window the receiver must keep).
    pub window_bits: WindowBits,
    /// Whether the sender may refer back to earlier messages. When `false`, every message
    /// is a self-contained DEFLATE stream and the receiver keeps nothing between messages.
    pub context_takeover: bool,
}

/// The parameters both ends agreed on (RFC 7692 §7, "agreed parameters").
///
/// Absent window parameters mean 15 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeflateParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: WindowBits,
    client_max_window_bits: WindowBits,
}

impl DeflateParams {
    /// Whether the server compresses every message on its own (always true with ringcast's
    /// server).
    pub const fn server_no_context_takeover(&self) -> bool {
        self.server_no_context_takeover
    }

    /// Whether the client compresses every message on its own.
    pub const fn client_no_context_takeover(&self) -> bool {
        self.client_no_context_takeover
    }

    /// The largest window the server compresses with.
    pub const fn server_max_window_bits(&self) -> WindowBits {
        self.server_max_window_bits
    }

    /// The largest window the client compresses with.
    pub const fn client_max_window_bits(&self) -> WindowBits {
        self.client_max_window_bits
    }

    /// What the server sends to the client.
    pub const fn server_to_client(&self) -> Direction {
        Direction { window_bits: self.server_max_window_bits, context_takeover: !self.server_no_context_takeover }
    }

    /// What the client sends to the server.
    pub const fn client_to_server(&self) -> Direction {
        Direction { window_bits: self.client_max_window_bits, context_takeover: !self.client_no_context_takeover }
    }

    /// The direction an endpoint in `role` compresses in.
    pub const fn outgoing(&self, role: Role) -> Direction {
        match role {
            Role::Server => self.server_to_client(),
            Role::Client => self.client_to_server(),
        }
    }

    /// The direction an endpoint in `role` inflates.
    pub const fn incoming(&self, role: Role) -> Direction {
        match role {
            Role::Server => self.client_to_server(),
            Role::Client => self.server_to_client(),
        }
    }
}

/// A server's acceptance of one offer: the agreed parameters and the header value that
/// tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    params: DeflateParams,
    response: String,
}

impl Negotiated {
    /// The agreed parameters.
    pub const fn params(&self) -> &DeflateParams {
        &self.params
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 response, e.g.
    /// `permessage-deflate; server_no_context_takeover`.
    pub fn response_header_value(&self) -> &str {
        &self.response
    }

    /// The whole header line, `Sec-WebSocket-Extensions: …\r\n`, ready for the
    /// `extra_headers` of [`accept_response`](crate::handshake::accept_response).
    pub fn response_header_line(&self) -> String {
        format!("Sec-WebSocket-Extensions: {}\r\n", self.response)
    }
}

// ---------------------------------------------------------------------------------------
// Server side.

/// A server's permessage-deflate settings, built in the style of a builder.
///
/// The server always uses no context takeover for what it sends, so one compression of a
/// broadcast serves every subscriber.
///
/// ```
/// use ringcast_codec::deflate::{CompressionLevel, ServerDeflateConfig, WindowBits};
/// let config = ServerDeflateConfig::new()
///     .level(CompressionLevel::FAST)
///     .min_message_size(512)
///     .client_max_window_bits(WindowBits::new(12).unwrap());
/// let negotiated = config.negotiate(["permessage-deflate; client_max_window_bits"]).unwrap();
/// assert_eq!(
///     negotiated.response_header_value(),
///     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=12"
/// );
/// // An offer that cannot be limited to 12 bits is declined.
/// assert!(config.negotiate(["permessage-deflate"]).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerDeflateConfig {
    enabled: bool,
    level: CompressionLevel,
    min_message_size: usize,
    server_max_window_bits: WindowBits,
    min_server_window_bits: WindowBits,
    client_max_window_bits: WindowBits,
    client_no_context_takeover: bool,
}

impl Default for ServerDeflateConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerDeflateConfig {
    /// Enabled, level 6, messages from 256 bytes compressed, any window honoured, 15-bit
    /// windows accepted from clients, and clients told to use no context takeover (so an
    /// idle connection holds no inflate state).
    pub const fn new() -> Self {
        ServerDeflateConfig {
            enabled: true,
            level: CompressionLevel::DEFAULT,
            min_message_size: 256,
            server_max_window_bits: WindowBits::MAX,
            min_server_window_bits: WindowBits::MIN,
            client_max_window_bits: WindowBits::MAX,
            client_no_context_takeover: true,
        }
    }

    /// Whether the extension is negotiated at all.
    pub const fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The compression level of outgoing messages.
    pub const fn level(mut self, level: CompressionLevel) -> Self {
        self.level = level;
        self
    }

    /// Messages shorter than this many bytes are sent uncompressed.
    pub const fn min_message_size(mut self, bytes: usize) -> Self {
        self.min_message_size = bytes;
        self
    }

    /// The largest window the server compresses with. Below 15 the response always carries
    /// `server_max_window_bits`, which RFC 7692 allows even when the offer did not ask.
    pub const fn server_max_window_bits(mut self, bits: WindowBits) -> Self {
        self.server_max_window_bits = bits;
        self
    }

    /// Offers that limit the server's window below this are declined. Each distinct window
    /// can cost one more compression of a large broadcast (see
    /// [`variant_window_bits`](super::variant_window_bits)); 15 guarantees a single
    /// compressed variant per broadcast. Default 8: every window is honoured.
    pub const fn min_server_window_bits(mut self, bits: WindowBits) -> Self {
        self.min_server_window_bits = bits;
        self
    }

    /// The largest window clients may compress with: the window the server's inflater
    /// holds while a message arrives. Below 15, offers without `client_max_window_bits`
    /// are declined, because such a client cannot be told the limit (RFC 7692 §7.1.2.2).
    pub const fn client_max_window_bits(mut self, bits: WindowBits) -> Self {
        self.client_max_window_bits = bits;
        self
    }

    /// Whether to require `client_no_context_takeover`, so that the server keeps no
    /// inflate state between a client's messages. Default true; when false, the server
    /// still answers with it whenever the client offered it.
    pub const fn client_no_context_takeover(mut self, require: bool) -> Self {
        self.client_no_context_takeover = require;
        self
    }

    /// Whether the extension is negotiated.
    pub const fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The configured compression level.
    pub const fn compression_level(&self) -> CompressionLevel {
        self.level
    }

    /// The configured minimum size of a compressed message.
    pub const fn min_message_size_limit(&self) -> usize {
        self.min_message_size
    }

    /// Picks the first acceptable permessage-deflate offer among `header_values` (each a
    /// `Sec-WebSocket-Extensions` field value, in order) and returns the agreement, or
    /// `None` when the extension is disabled or no offer is acceptable.
    ///
    /// An offer is declined (and the next one considered) when it has an unknown
    /// parameter, an invalid value, a repeated parameter, a syntax error, or asks for a
    /// configuration this server does not accept (RFC 7692 §7.1). Declining never fails the
    /// handshake: the connection then simply runs uncompressed.
    pub fn negotiate<I>(&self, header_values: I) -> Option<Negotiated>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        if !self.enabled {
            return None;
        }
        let mut found = None;
        for value in header_values {
            for_each_extension(value.as_ref(), |extension| {
                if found.is_some() {
                    return;
                }
                let Ok(extension) = extension else { return };
                if !extension.name.eq_ignore_ascii_case(EXTENSION_NAME.as_bytes()) {
                    return;
                }
                found = Offer::parse(&extension.params).and_then(|offer| self.accept(&offer));
            });
            if found.is_some() {
                break;
            }
        }
        found
    }

    /// [`negotiate`](Self::negotiate) over every `Sec-WebSocket-Extensions` header of
    /// `request`.
    pub fn negotiate_request(&self, request: &Request) -> Option<Negotiated> {
        let values: Vec<&[u8]> = request
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, value)| value)
            .collect();
        self.negotiate(values)
    }

    fn accept(&self, offer: &Offer) -> Option<Negotiated> {
        let server_max_window_bits = match offer.server_max_window_bits {
            Some(requested) if requested < self.min_server_window_bits => return None,
            Some(requested) => requested.min(self.server_max_window_bits),
            None => self.server_max_window_bits,
        };
        let client_max_window_bits = match offer.client_max_window_bits {
            None if self.client_max_window_bits < WindowBits::MAX => return None,
            None => WindowBits::MAX,
            Some(hint) => hint.unwrap_or(WindowBits::MAX).min(self.client_max_window_bits),
        };
        let params = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: self.client_no_context_takeover || offer.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
        };
        let mut response = String::from(EXTENSION_NAME);
        response.push_str("; ");
        response.push_str(SERVER_NO_CONTEXT_TAKEOVER);
        if params.client_no_context_takeover {
            response.push_str("; ");
            response.push_str(CLIENT_NO_CONTEXT_TAKEOVER);
        }
        // The offer's own limit must be answered (§7.1.2.1); an unrequested one only when
        // the server limits itself, since some clients mishandle an unrequested parameter.
        if offer.server_max_window_bits.is_some() || server_max_window_bits < WindowBits::MAX {
            let _ = write!(response, "; {SERVER_MAX_WINDOW_BITS}={server_max_window_bits}");
        }
        if offer.client_max_window_bits.is_some() && client_max_window_bits < WindowBits::MAX {
            let _ = write!(response, "; {CLIENT_MAX_WINDOW_BITS}={client_max_window_bits}");
        }
        Some(Negotiated { params, response })
    }
}

/// One permessage-deflate offer, checked against RFC 7692 §7.1.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<WindowBits>,
    /// `Some(None)`: the parameter without a value, "the client supports it".
    client_max_window_bits: Option<Option<WindowBits>>,
}

impl Offer {
    /// The offer, or `None` if it must be declined: unknown parameter, invalid value, or a
    /// parameter given twice.
    fn parse(params: &[Param<'_>]) -> Option<Offer> {
        let mut offer = Offer::default();
        let mut seen = Seen::default();
        for param in params {
            match seen.first(&param.name)? {
                Known::ServerNoContextTakeover => {
                    flag(param)?;
                    offer.server_no_context_takeover = true;
                }
                Known::ClientNoContextTakeover => {
                    flag(param)?;
                    offer.client_no_context_takeover = true;
                }
                Known::ServerMaxWindowBits => {
                    offer.server_max_window_bits = Some(window_bits(param.value.as_deref()?)?);
                }
                Known::ClientMaxWindowBits => {
                    offer.client_max_window_bits = Some(match param.value.as_deref() {
                        None => None,
                        Some(value) => Some(window_bits(value)?),
                    });
                }
            }
        }
        Some(offer)
    }
}

// ---------------------------------------------------------------------------------------
// Client side.

/// A client's permessage-deflate settings, built in the style of a builder.
///
/// The client offers one configuration. It always advertises `client_max_window_bits`
/// (it can compress with any window the server asks for) and keeps its compression
/// context between messages unless told not to, or unless configured with
/// [`client_no_context_takeover`](Self::client_no_context_takeover).
///
/// ```
/// use ringcast_codec::deflate::ClientDeflateConfig;
/// use ringcast_codec::Role;
/// let config = ClientDeflateConfig::new();
/// assert_eq!(config.offer().as_deref(), Some("permessage-deflate; client_max_window_bits"));
/// let params = config
///     .accept_response(["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"])?
///     .expect("the server accepted");
/// assert_eq!(params.outgoing(Role::Client).window_bits.get(), 10);
/// assert!(!params.incoming(Role::Client).context_takeover);
/// // A declined offer: no extension header at all.
/// assert_eq!(config.accept_response(Vec::<&str>::new())?, None);
/// # Ok::<(), ringcast_codec::deflate::ExtensionResponseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDeflateConfig {
    enabled: bool,
    level: CompressionLevel,
    min_message_size: usize,
    request_server_no_context_takeover: bool,
    request_server_max_window_bits: Option<WindowBits>,
    client_no_context_takeover: bool,
    client_max_window_bits: Option<WindowBits>,
}

impl Default for ClientDeflateConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientDeflateConfig {
    /// Enabled, level 6, messages from 256 bytes compressed; offers
    /// `permessage-deflate; client_max_window_bits`, as browsers do.
    pub const fn new() -> Self {
        ClientDeflateConfig {
            enabled: true,
            level: CompressionLevel::DEFAULT,
            min_message_size: 256,
            request_server_no_context_takeover: false,
            request_server_max_window_bits: None,
            client_no_context_takeover: false,
            client_max_window_bits: None,
        }
    }

    /// Whether the extension is offered at all.
    pub const fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The compression level of outgoing messages.
    pub const fn level(mut self, level: CompressionLevel) -> Self {
        self.level = level;
        self
    }

    /// Messages shorter than this many bytes are sent uncompressed.
    pub const fn min_message_size(mut self, bytes: usize) -> Self {
        self.min_message_size = bytes;
        self
    }

    /// Ask the server to compress every message on its own (`server_no_context_takeover`),
    /// so that the client keeps no inflate state between messages.
    pub const fn request_server_no_context_takeover(mut self, request: bool) -> Self {
        self.request_server_no_context_takeover = request;
        self
    }

    /// Ask the server to compress with at most this window (`server_max_window_bits`). A
    /// server that ignores the request fails the handshake.
    pub const fn request_server_max_window_bits(mut self, bits: Option<WindowBits>) -> Self {
        self.request_server_max_window_bits = bits;
        self
    }

    /// Promise to compress every message on its own (`client_no_context_takeover`): less
    /// memory for both ends, somewhat larger messages when they resemble each other.
    pub const fn client_no_context_takeover(mut self, promise: bool) -> Self {
        self.client_no_context_takeover = promise;
        self
    }

    /// Promise to compress with at most this window (`client_max_window_bits=N`); `None`
    /// offers the parameter without a value.
    pub const fn client_max_window_bits(mut self, bits: Option<WindowBits>) -> Self {
        self.client_max_window_bits = bits;
        self
    }

    /// Whether the extension is offered.
    pub const fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The configured compression level.
    pub const fn compression_level(&self) -> CompressionLevel {
        self.level
    }

    /// The configured minimum size of a compressed message.
    pub const fn min_message_size_limit(&self) -> usize {
        self.min_message_size
    }

    /// The `Sec-WebSocket-Extensions` value to send, or `None` when disabled.
    pub fn offer(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let mut offer = String::from(EXTENSION_NAME);
        if self.request_server_no_context_takeover {
            let _ = write!(offer, "; {SERVER_NO_CONTEXT_TAKEOVER}");
        }
        if self.client_no_context_takeover {
            let _ = write!(offer, "; {CLIENT_NO_CONTEXT_TAKEOVER}");
        }
        if let Some(bits) = self.request_server_max_window_bits {
            let _ = write!(offer, "; {SERVER_MAX_WINDOW_BITS}={bits}");
        }
        match self.client_max_window_bits {
            Some(bits) => {
                let _ = write!(offer, "; {CLIENT_MAX_WINDOW_BITS}={bits}");
            }
            None => {
                let _ = write!(offer, "; {CLIENT_MAX_WINDOW_BITS}");
            }
        }
        Some(offer)
    }

    /// Checks the server's `Sec-WebSocket-Extensions` values against the offer.
    ///
    /// `Ok(None)`: the server declined (no permessage-deflate in the response); the
    /// connection runs uncompressed. An error means the client must fail the connection
    /// (RFC 6455 §4.1, RFC 7692 §7.1): an extension that was not offered, a repeated
    /// extension or parameter, an unknown parameter, an invalid value, or a configuration
    /// other than the one asked for.
    pub fn accept_response<I>(&self, header_values: I) -> Result<Option<DeflateParams>, ExtensionResponseError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut accepted = None;
        let mut failure = None;
        for value in header_values {
            for_each_extension(value.as_ref(), |extension| {
                if failure.is_some() {
                    return;
                }
                let result = match extension {
                    Err(syntax) => Err(ExtensionResponseError::Malformed(syntax)),
                    Ok(extension) if !extension.name.eq_ignore_ascii_case(EXTENSION_NAME.as_bytes()) => {
                        Err(ExtensionResponseError::UnexpectedExtension(lossy(extension.name)))
                    }
                    Ok(_) if !self.enabled => Err(ExtensionResponseError::NotOffered),
                    Ok(_) if accepted.is_some() => Err(ExtensionResponseError::DuplicateExtension),
                    Ok(extension) => self.check_response(&extension.params).map(|params| accepted = Some(params)),
                };
                if let Err(error) = result {
                    failure = Some(error);
                }
            });
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Ok(accepted)
    }

    /// [`accept_response`](Self::accept_response) over the `Sec-WebSocket-Extensions`
    /// headers of a handshake response's `(name, value)` pairs.
    pub fn accept_response_headers(
        &self,
        headers: &[(String, String)],
    ) -> Result<Option<DeflateParams>, ExtensionResponseError> {
        self.accept_response(
            headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|(_, value)| value.as_bytes()),
        )
    }

    fn check_response(&self, params: &[Param<'_>]) -> Result<DeflateParams, ExtensionResponseError> {
        let mut seen = Seen::default();
        let mut server_no_context_takeover = false;
        let mut client_no_context_takeover = false;
        let mut server_max_window_bits = None;
        let mut client_max_window_bits = None;
        for param in params {
            let invalid = || ExtensionResponseError::InvalidValue {
                parameter: lossy(&param.name),
                value: param.value.as_deref().map(lossy),
            };
            let known = seen
                .classify(&param.name)
                .ok_or_else(|| ExtensionResponseError::UnknownParameter(lossy(&param.name)))?;
            if !seen.mark(known) {
                return Err(ExtensionResponseError::DuplicateParameter(known.name()));
            }
            match known {
                Known::ServerNoContextTakeover => {
                    flag(param).ok_or_else(invalid)?;
                    server_no_context_takeover = true;
                }
                Known::ClientNoContextTakeover => {
                    flag(param).ok_or_else(invalid)?;
                    client_no_context_takeover = true;
                }
                // In a response both window parameters need a value (§7.1.2).
                Known::ServerMaxWindowBits => {
                    server_max_window_bits = Some(param.value.as_deref().and_then(window_bits).ok_or_else(invalid)?);
                }
                Known::ClientMaxWindowBits => {
                    client_max_window_bits = Some(param.value.as_deref().and_then(window_bits).ok_or_else(invalid)?);
                }
            }
        }
        if self.request_server_no_context_takeover && !server_no_context_takeover {
            return Err(ExtensionResponseError::MissingParameter(SERVER_NO_CONTEXT_TAKEOVER));
        }
        if let Some(requested) = self.request_server_max_window_bits {
            match server_max_window_bits {
                None => return Err(ExtensionResponseError::MissingParameter(SERVER_MAX_WINDOW_BITS)),
                Some(answered) if answered > requested => {
                    return Err(ExtensionResponseError::ServerWindowTooLarge { requested, answered });
                }
                Some(_) => {}
            }
        }
        let promised = self.client_max_window_bits.unwrap_or(WindowBits::MAX);
        Ok(DeflateParams {
            server_no_context_takeover,
            client_no_context_takeover: client_no_context_takeover || self.client_no_context_takeover,
            server_max_window_bits: server_max_window_bits.unwrap_or(WindowBits::MAX),
            client_max_window_bits: client_max_window_bits.unwrap_or(WindowBits::MAX).min(promised),
        })
    }
}

/// Why a server's `Sec-WebSocket-Extensions` answer is refused; the client must fail the
/// connection (RFC 6455 §4.1 and RFC 7692 §7.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtensionResponseError {
    /// The header is not a valid extension list.
    #[error("malformed Sec-WebSocket-Extensions in the response: {0}")]
    Malformed(String),
    /// The server accepted permessage-deflate, which this client did not offer.
    #[error("the server enabled permessage-deflate, which the client did not offer")]
    NotOffered,
    /// The server named an extension the client did not offer.
    #[error("the server enabled extension {0:?}, which the client did not offer")]
    UnexpectedExtension(String),
    /// permessage-deflate appeared more than once.
    #[error("the server accepted permessage-deflate more than once")]
    DuplicateExtension,
    /// A parameter RFC 7692 does not define for a response.
    #[error("unknown permessage-deflate parameter {0:?} in the response")]
    UnknownParameter(String),
    /// A parameter appeared twice.
    #[error("permessage-deflate parameter {0} appears twice in the response")]
    DuplicateParameter(&'static str),
    /// A parameter with a value it may not have (or without one it needs).
    #[error("invalid value {value:?} for permessage-deflate parameter {parameter}")]
    InvalidValue {
        /// The parameter's name as sent.
        parameter: String,
        /// The value as sent (unquoted); `None` when it had none.
        value: Option<String>,
    },
    /// The server left out a parameter the client asked for, so it did not agree to it.
    #[error("the server did not confirm {0}, which the client asked for")]
    MissingParameter(&'static str),
    /// The server answered `server_max_window_bits` with more than the client allows.
    #[error("the server chose server_max_window_bits={answered}, above the {requested} the client asked for")]
    ServerWindowTooLarge {
        /// What the client asked for.
        requested: WindowBits,
        /// What the server answered.
        answered: WindowBits,
    },
}

// ---------------------------------------------------------------------------------------
// Parameter names and values.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    ServerNoContextTakeover,
    ClientNoContextTakeover,
    ServerMaxWindowBits,
    ClientMaxWindowBits,
}

impl Known {
    const ALL: [Known; 4] = [
        Known::ServerNoContextTakeover,
        Known::ClientNoContextTakeover,
        Known::ServerMaxWindowBits,
        Known::ClientMaxWindowBits,
    ];

    const fn name(self) -> &'static str {
        match self {
            Known::ServerNoContextTakeover => SERVER_NO_CONTEXT_TAKEOVER,
            Known::ClientNoContextTakeover => CLIENT_NO_CONTEXT_TAKEOVER,
            Known::ServerMaxWindowBits => SERVER_MAX_WINDOW_BITS,
            Known::ClientMaxWindowBits => CLIENT_MAX_WINDOW_BITS,
        }
    }
}

/// Which known parameters one extension element has used so far.
#[derive(Debug, Default)]
struct Seen([bool; 4]);

impl Seen {
    fn classify(&self, name: &[u8]) -> Option<Known> {
        Known::ALL.into_iter().find(|known| name.eq_ignore_ascii_case(known.name().as_bytes()))
    }

    /// Records `known`; false if it was already there.
    fn mark(&mut self, known: Known) -> bool {
        !std::mem::replace(&mut self.0[known as usize], true)
    }

    /// The parameter, if it is known and not a repeat.
    fn first(&mut self, name: &[u8]) -> Option<Known> {
        let known = self.classify(name)?;
        self.mark(known).then_some(known)
    }
}

/// A parameter that takes no value.
fn flag(param: &Param<'_>) -> Option<()> {
    param.value.is_none().then_some(())
}

/// `1*DIGIT` without leading zeroes, 8 to 15 (RFC 7692 §7.1.2.1).
fn window_bits(value: &[u8]) -> Option<WindowBits> {
    match value {
        [digit @ b'8'..=b'9'] => WindowBits::new(digit - b'0'),
        [b'1', digit @ b'0'..=b'5'] => WindowBits::new(10 + digit - b'0'),
        _ => None,
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------
// The header grammar.

/// One `name[=value]` parameter; a quoted value arrives unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Param<'a> {
    name: Cow<'a, [u8]>,
    value: Option<Cow<'a, [u8]>>,
}

/// One element of the extension list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extension<'a> {
    name: &'a [u8],
    params: Vec<Param<'a>>,
}

/// Calls `visit` with each element of an extension list, or with a description of why an
/// element is malformed. After a malformed element parsing resumes at the next comma
/// outside a quoted string, so one bad offer does not hide the next; an unterminated
/// quoted string ends the list.
fn for_each_extension<'a>(input: &'a [u8], mut visit: impl FnMut(Result<Extension<'a>, String>)) {
    let mut cursor = Cursor { input, at: 0 };
    loop {
        // Empty list elements are allowed and ignored (RFC 7230 §7).
        loop {
            cursor.skip_ows();
            if !cursor.eat(b',') {
                break;
            }
        }
        if cursor.at_end() {
            return;
        }
        match cursor.extension() {
            Ok(extension) => visit(Ok(extension)),
            Err(reason) => {
                visit(Err(reason));
                if !cursor.skip_to_next_element() {
                    return;
                }
            }
        }
    }
}

struct Cursor<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.at >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn token(&mut self) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        &self.input[start..self.at]
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            Some(byte) => format!("unexpected {:?} at byte {}", char::from(byte), self.at),
            None => "unexpected end".to_owned(),
        }
    }

    /// `token *( OWS ";" OWS token [ OWS "=" OWS ( token / quoted-string ) ] )`, followed by
    /// OWS and a comma or the end.
    fn extension(&mut self) -> Result<Extension<'a>, String> {
        let name = self.token();
        if name.is_empty() {
            return Err(format!("expected an extension name: {}", self.describe_here()));
        }
        let mut params = Vec::new();
        loop {
            self.skip_ows();
            if self.at_end() || self.eat(b',') {
                return Ok(Extension { name, params });
            }
            if !self.eat(b';') {
                return Err(format!("expected ';' or ',': {}", self.describe_here()));
            }
            self.skip_ows();
            let param_name = self.token();
            if param_name.is_empty() {
                return Err(format!("expected a parameter name: {}", self.describe_here()));
            }
            self.skip_ows();
            let value = if self.eat(b'=') {
                self.skip_ows();
                Some(self.value()?)
            } else {
                None
            };
            params.push(Param { name: Cow::Borrowed(param_name), value });
        }
    }

    fn value(&mut self) -> Result<Cow<'a, [u8]>, String> {
        if !self.eat(b'"') {
            let token = self.token();
            return if token.is_empty() {
                Err(format!("expected a parameter value: {}", self.describe_here()))
            } else {
                Ok(Cow::Borrowed(token))
            };
        }
        let start = self.at;
        let mut unescaped: Option<Vec<u8>> = None;
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string".to_owned()),
                Some(b'"') => {
                    let raw = &self.input[start..self.at];
                    self.at += 1;
                    let value = unescaped.map_or(Cow::Borrowed(raw), Cow::Owned);
                    // RFC 6455 §9.1: the unescaped value must still be a token.
                    return if !value.is_empty() && value.iter().copied().all(is_tchar) {
                        Ok(value)
                    } else {
                        Err(format!("quoted value {:?} is not a token", String::from_utf8_lossy(&value)))
                    };
                }
                Some(b'\\') => {
                    let escaped = self.input.get(self.at + 1).copied().ok_or("unterminated quoted string")?;
                    unescaped.get_or_insert_with(|| self.input[start..self.at].to_vec()).push(escaped);
                    self.at += 2;
                }
                Some(byte) => {
                    if let Some(buf) = unescaped.as_mut() {
                        buf.push(byte);
                    }
                    self.at += 1;
                }
            }
        }
    }

    /// Moves past the next comma outside a quoted string; false if the input ends first or
    /// inside an unterminated quote.
    fn skip_to_next_element(&mut self) -> bool {
        let mut quoted = false;
        while let Some(byte) = self.peek() {
            self.at += 1;
            match byte {
                b'\\' if quoted => self.at += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => return true,
                _ => {}
            }
        }
        false
    }
}

/// RFC 9110 `tchar`.
const fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

/// An extension element as text, for tests: name and (name, value) parameters.
#[cfg(test)]
pub(super) type ParsedExtension = Result<(String, Vec<(String, Option<String>)>), String>;

#[cfg(test)]
pub(super) fn parse_all(input: &str) -> Vec<ParsedExtension> {
    let mut out = Vec::new();
    for_each_extension(input.as_bytes(), |extension| {
        out.push(extension.map(|extension| {
            (
                lossy(extension.name),
                extension.params.iter().map(|p| (lossy(&p.name), p.value.as_deref().map(lossy))).collect(),
            )
        }))
    });
    out
}
