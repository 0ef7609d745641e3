//! The WS-Management (MS-WSMV) envelopes of the remote shell: Create, Command, Receive,
//! Signal and Delete of a `cmd` shell (MS-WSMV 3.1.4.1.30 ff.), and the parts of the
//! answers the client needs: the shell and command ids, the output streams, the
//! command's state and exit code, and SOAP faults.

use base64::Engine as _;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;

/// The resource URI of the Windows remote shell.
pub const RESOURCE_URI_CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
/// WS-Transfer Create: opens a shell.
pub const ACTION_CREATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
/// WS-Transfer Delete: closes a shell.
pub const ACTION_DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
/// Starts a command in a shell.
pub const ACTION_COMMAND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
/// Long-polls a command's output.
pub const ACTION_RECEIVE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive";
/// Sends a signal (terminate) to a command.
pub const ACTION_SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal";
/// The signal that ends a command.
pub const SIGNAL_TERMINATE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate";
/// The `CommandState` of a command that has exited.
pub const STATE_DONE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
/// The WS-Management error code of `w:TimedOut`: the operation timeout passed with no
/// output; the client polls again (MS-WSMV 3.1.4.14.2).
pub const OPERATION_TIMEOUT_CODE: &str = "2150858793";
/// `MaxEnvelopeSize` the client asks for, as WinRM's default (150 KiB).
pub const MAX_ENVELOPE_SIZE: u32 = 153_600;

/// One WS-Management request.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// Opens a `cmd` shell with stdin, stdout and stderr streams.
    Create,
    /// Starts `command` with `arguments` in `shell`.
    Command {
        /// The shell.
        shell: &'a str,
        /// The program.
        command: &'a str,
        /// Its arguments, one element each.
        arguments: &'a [String],
    },
    /// Polls the output of `command` in `shell`.
    Receive {
        /// The shell.
        shell: &'a str,
        /// The command.
        command: &'a str,
    },
    /// Terminates `command` in `shell`.
    Signal {
        /// The shell.
        shell: &'a str,
        /// The command.
        command: &'a str,
    },
    /// Closes `shell`.
    Delete {
        /// The shell.
        shell: &'a str,
    },
}

impl Request<'_> {
    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Create => "Create",
            Request::Command { .. } => "Command",
            Request::Receive { .. } => "Receive",
            Request::Signal { .. } => "Signal",
            Request::Delete { .. } => "Delete",
        }
    }

    /// The `wsa:Action` URI.
    pub fn action(&self) -> &'static str {
        match self {
            Request::Create => ACTION_CREATE,
            Request::Command { .. } => ACTION_COMMAND,
            Request::Receive { .. } => ACTION_RECEIVE,
            Request::Signal { .. } => ACTION_SIGNAL,
            Request::Delete { .. } => ACTION_DELETE,
        }
    }

    /// The SOAP envelope to `to` with a fresh `MessageID`, asking the host to answer
    /// within `operation_timeout_seconds`.
    pub fn envelope(&self, to: &str, operation_timeout_seconds: u64) -> String {
        let message_id = uuid::Uuid::new_v4();
        let shell = match self {
            Request::Create => None,
            Request::Command { shell, .. }
            | Request::Receive { shell, .. }
            | Request::Signal { shell, .. }
            | Request::Delete { shell } => Some(*shell),
        };
        let selector = shell
            .map(|id| {
                format!(
                    r#"<wsman:SelectorSet><wsman:Selector Name="ShellId">{}</wsman:Selector></wsman:SelectorSet>"#,
                    escape(id)
                )
            })
            .unwrap_or_default();
        let options = match self {
            Request::Create => concat!(
                r#"<wsman:OptionSet><wsman:Option Name="WINRS_NOPROFILE">TRUE</wsman:Option>"#,
                r#"<wsman:Option Name="WINRS_CODEPAGE">65001</wsman:Option></wsman:OptionSet>"#
            ),
            Request::Command { .. } => concat!(
                r#"<wsman:OptionSet><wsman:Option Name="WINRS_CONSOLEMODE_STDIN">TRUE</wsman:Option>"#,
                r#"<wsman:Option Name="WINRS_SKIP_CMD_SHELL">TRUE</wsman:Option></wsman:OptionSet>"#
            ),
            _ => "",
        };
        let body = match self {
            Request::Create => concat!(
                "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>",
                "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
            )
            .to_owned(),
            Request::Command {
                command, arguments, ..
            } => {
                let mut body = format!(
                    "<rsp:CommandLine><rsp:Command>{}</rsp:Command>",
                    escape(*command)
                );
                for argument in arguments.iter() {
                    body.push_str(&format!(
                        "<rsp:Arguments>{}</rsp:Arguments>",
                        escape(argument.as_str())
                    ));
                }
                body.push_str("</rsp:CommandLine>");
                body
            }
            Request::Receive { command, .. } => format!(
                r#"<rsp:Receive><rsp:DesiredStream CommandId="{}">stdout stderr</rsp:DesiredStream></rsp:Receive>"#,
                escape(*command)
            ),
            Request::Signal { command, .. } => format!(
                r#"<rsp:Signal CommandId="{}"><rsp:Code>{SIGNAL_TERMINATE}</rsp:Code></rsp:Signal>"#,
                escape(*command)
            ),
            Request::Delete { .. } => String::new(),
        };
        format!(
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?>"#,
                r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" "#,
                r#"xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" "#,
                r#"xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" "#,
                r#"xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" "#,
                r#"xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell">"#,
                "<s:Header>",
                "<wsa:To>{to}</wsa:To>",
                r#"<wsa:ReplyTo><wsa:Address s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>"#,
                r#"<wsman:MaxEnvelopeSize s:mustUnderstand="true">{max}</wsman:MaxEnvelopeSize>"#,
                "<wsa:MessageID>uuid:{id}</wsa:MessageID>",
                r#"<wsman:Locale xml:lang="en-US" s:mustUnderstand="false"/>"#,
                r#"<p:DataLocale xml:lang="en-US" s:mustUnderstand="false"/>"#,
                "<wsman:OperationTimeout>PT{timeout}S</wsman:OperationTimeout>",
                r#"<wsman:ResourceURI s:mustUnderstand="true">{resource}</wsman:ResourceURI>"#,
                r#"<wsa:Action s:mustUnderstand="true">{action}</wsa:Action>"#,
                "{selector}{options}",
                "</s:Header>",
                "<s:Body>{body}</s:Body>",
                "</s:Envelope>"
            ),
            to = escape(to),
            max = MAX_ENVELOPE_SIZE,
            id = message_id,
            timeout = operation_timeout_seconds,
            resource = RESOURCE_URI_CMD,
            action = self.action(),
            selector = selector,
            options = options,
            body = body,
        )
    }
}

/// What an answer holds that the client uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// `ShellId` (Create), from the body's `rsp:ShellId` or the `ResourceCreated`
    /// selector.
    pub shell_id: Option<String>,
    /// `rsp:CommandId` (Command).
    pub command_id: Option<String>,
    /// Decoded `rsp:Stream` chunks (Receive), in order: (`stdout`|`stderr`, bytes).
    pub streams: Vec<(String, Vec<u8>)>,
    /// Whether `rsp:CommandState` says `Done`.
    pub done: bool,
    /// `rsp:ExitCode`, once done.
    pub exit_code: Option<i64>,
    /// A SOAP fault instead of an answer.
    pub fault: Option<Fault>,
}

/// A SOAP fault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    /// `s:Code/s:Value` and its subcodes, e.g. `s:Receiver`, `w:TimedOut`.
    pub codes: Vec<String>,
    /// `f:WSManFault/@Code`: the WS-Management (WMI) error number.
    pub wsman_code: Option<String>,
    /// `s:Reason/s:Text` or `f:Message`.
    pub reason: String,
}

impl Fault {
    /// Whether this is the operation timeout: no output yet, poll again.
    pub fn is_operation_timeout(&self) -> bool {
        self.wsman_code.as_deref() == Some(OPERATION_TIMEOUT_CODE)
            || self.codes.iter().any(|c| c.ends_with(":TimedOut"))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes = self.codes.join("/");
        match &self.wsman_code {
            Some(code) => write!(f, "{} ({codes}, code {code})", self.reason.trim()),
            None => write!(f, "{} ({codes})", self.reason.trim()),
        }
    }
}

/// Parses an answer; an error says what is not well-formed.
pub fn parse(xml: &str) -> Result<Response, String> {
    let mut reader = Reader::from_str(xml);
    let mut response = Response::default();
    let mut path: Vec<String> = Vec::new();
    // The attributes of the innermost open element that the text belongs to.
    let mut stream_name: Option<String> = None;
    let mut selector_is_shell = false;
    let mut fault: Option<Fault> = None;
    let mut in_fault_message = false;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "not well-formed XML at byte {}: {e}",
                reader.error_position()
            )
        })?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let empty = matches!(event, Event::Empty(_));
                let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let attribute = |name: &str| {
                    start
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == name.as_bytes())
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                };
                match local.as_str() {
                    "Stream" => stream_name = attribute("Name"),
                    "CommandState" if attribute("State").is_some_and(|s| s == STATE_DONE) => {
                        response.done = true;
                    }
                    "Selector" => {
                        selector_is_shell = attribute("Name").is_some_and(|n| n == "ShellId");
                    }
                    "Fault" if path.last().is_some_and(|p| p == "Body") => {
                        fault = Some(Fault::default());
                    }
                    "WSManFault" => {
                        if let Some(fault) = fault.as_mut() {
                            fault.wsman_code = attribute("Code");
                        }
                    }
                    "Message" if fault.is_some() => in_fault_message = true,
                    _ => {}
                }
                if !empty {
                    path.push(local);
                }
            }
            Event::End(_) => {
                let closed = path.pop();
                in_fault_message &= closed.as_deref() != Some("Message");
            }
            Event::Text(text) => {
                let text = text
                    .unescape()
                    .map_err(|e| format!("bad text in {:?}: {e}", path.last()))?;
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                match path.last().map(String::as_str) {
                    Some("ShellId") => response.shell_id = Some(text.to_owned()),
                    Some("Selector") if selector_is_shell && response.shell_id.is_none() => {
                        response.shell_id = Some(text.to_owned());
                    }
                    Some("CommandId") => response.command_id = Some(text.to_owned()),
                    Some("ExitCode") => {
                        response.exit_code = Some(
                            text.parse()
                                .map_err(|_| format!("ExitCode {text:?} is not a number"))?,
                        );
                    }
                    Some("Stream") => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .map_err(|e| format!("a Stream is not base64: {e}"))?;
                        response.streams.push((
                            stream_name.clone().unwrap_or_else(|| "stdout".to_owned()),
                            bytes,
                        ));
                    }
                    Some("Value") => {
                        if let Some(fault) = fault.as_mut() {
                            fault.codes.push(text.to_owned());
                        }
                    }
                    Some("Text") => {
                        if let Some(fault) = fault.as_mut() {
                            fault.reason = text.to_owned();
                        }
                    }
                    _ if in_fault_message => {
                        if let Some(fault) = fault.as_mut() {
                            if fault.reason.is_empty() {
                                fault.reason = text.to_owned();
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    response.fault = fault;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_the_action_resource_and_selector() {
        let arguments = vec!["-EncodedCommand".to_owned(), "ZQBjAGgAbwA=".to_owned()];
        let xml = Request::Command {
            shell: "S-1",
            command: "powershell.exe",
            arguments: &arguments,
        }
        .envelope("https://h:5986/wsman", 20);
        assert!(xml.contains(ACTION_COMMAND));
        assert!(xml.contains(RESOURCE_URI_CMD));
        assert!(xml.contains(r#"<wsman:Selector Name="ShellId">S-1</wsman:Selector>"#));
        assert!(xml.contains("<rsp:Arguments>ZQBjAGgAbwA=</rsp:Arguments>"));
        assert!(xml.contains("<wsman:OperationTimeout>PT20S</wsman:OperationTimeout>"));
        assert!(xml.contains("<wsa:MessageID>uuid:"));
        let create = Request::Create.envelope("https://h:5986/wsman", 20);
        assert!(create.contains(ACTION_CREATE) && !create.contains("SelectorSet"));
        let parsed = parse(&xml).expect("well-formed");
        assert_eq!(parsed, Response::default().with_shell("S-1"));
    }

    impl Response {
        fn with_shell(mut self, id: &str) -> Self {
            self.shell_id = Some(id.to_owned());
            self
        }
    }

    #[test]
    fn receive_answers_give_streams_and_exit_code() {
        let xml = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Body><rsp:ReceiveResponse>
            <rsp:Stream Name="stdout" CommandId="C">aGVsbG8K</rsp:Stream>
            <rsp:Stream Name="stderr" CommandId="C">b29wcw==</rsp:Stream>
            <rsp:Stream Name="stdout" CommandId="C" End="true"></rsp:Stream>
            <rsp:CommandState CommandId="C" State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"><rsp:ExitCode>3</rsp:ExitCode></rsp:CommandState>
            </rsp:ReceiveResponse></s:Body></s:Envelope>"#;
        let parsed = parse(xml).expect("parse");
        assert_eq!(
            parsed.streams,
            vec![
                ("stdout".to_owned(), b"hello\n".to_vec()),
                ("stderr".to_owned(), b"oops".to_vec())
            ]
        );
        assert!(parsed.done);
        assert_eq!(parsed.exit_code, Some(3));
    }

    #[test]
    fn faults_and_the_operation_timeout() {
        let xml = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"><s:Body><s:Fault>
            <s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:TimedOut</s:Value></s:Subcode></s:Code>
            <s:Reason><s:Text xml:lang="en-US">The WS-Management service cannot complete the operation within the time specified in OperationTimeout.</s:Text></s:Reason>
            <s:Detail><f:WSManFault Code="2150858793" Machine="h"><f:Message>timed out</f:Message></f:WSManFault></s:Detail>
            </s:Fault></s:Body></s:Envelope>"#;
        let fault = parse(xml).expect("parse").fault.expect("fault");
        assert!(fault.is_operation_timeout());
        assert_eq!(fault.codes, vec!["s:Receiver", "w:TimedOut"]);
        assert!(fault.to_string().contains("code 2150858793"), "{fault}");
        assert!(parse("<a><b></a>").is_err());
    }
}
