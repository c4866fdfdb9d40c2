//! Legacy HTTP+SSE servers (protocol 2024-11-05): a GET opens an event
//! stream whose first `endpoint` event names the URL to POST messages to;
//! every answer comes back on the stream. Requests and responses share one
//! ordered channel, so the stdio multiplexer does the bookkeeping.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use sse_stream::SseByteStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::http::{bounded_events, build_client, describe, header_map};
use super::mux::{Mux, Outbound, Outgoing};
use super::{CallError, Caller, ConnContext, ServerInfo, initialize_params};

/// The message endpoint an `endpoint` event names, resolved against the
/// stream's URL. It must be on the stream's own origin (scheme, host and
/// port): a server cannot send the gateway's posts — and the configured
/// headers with them — anywhere else.
fn resolve_endpoint(stream: &reqwest::Url, data: &str) -> Result<reqwest::Url, CallError> {
    let endpoint = stream.join(data.trim()).map_err(|_| CallError::Protocol("bad endpoint event".into()))?;
    if endpoint.origin() != stream.origin() || !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(CallError::Protocol("endpoint on another origin".into()));
    }
    Ok(endpoint)
}

pub(crate) struct SseConn {
    pub mux: Arc<Mux>,
    pub info: ServerInfo,
    stop: CancellationToken,
}

impl SseConn {
    pub async fn connect(
        ctx: ConnContext,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<SseConn, CallError> {
        let url = reqwest::Url::parse(url).map_err(|e| CallError::Unavailable(format!("bad URL: {e}")))?;
        let client = build_client(ctx.connect_timeout)?;
        let headers = header_map(headers)?;
        let resp = client
            .get(url.clone())
            .headers(headers.clone())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| CallError::Unavailable(describe(&e)))?;
        if !resp.status().is_success() {
            return Err(CallError::Unavailable(format!("SSE stream answered HTTP {}", resp.status())));
        }
        let mut events = SseByteStream::new(bounded_events(resp.bytes_stream(), ctx.max_message_bytes));
        let endpoint = loop {
            let event = tokio::time::timeout(ctx.connect_timeout, events.next())
                .await
                .map_err(|_| CallError::Unavailable("no endpoint event".into()))?;
            match event {
                Some(Ok(e)) if e.event.as_deref() == Some("endpoint") => {
                    break resolve_endpoint(&url, &e.data.unwrap_or_default())?;
                }
                Some(Ok(_)) => continue,
                _ => return Err(CallError::Unavailable("the SSE stream ended before the endpoint event".into())),
            }
        };

        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(1024);
        let mux = Arc::new(Mux::new(ctx.clone(), Outbound::Channel(out_tx)));
        let stop = CancellationToken::new();

        // Writer: POST each message in order, with the trace context of
        // the call that sent it.
        let writer_stop = stop.clone();
        let server = ctx.server.clone();
        let writer_mux = mux.clone();
        tokio::spawn(async move {
            loop {
                let Outgoing { line, trace } = tokio::select! {
                    _ = writer_stop.cancelled() => break,
                    l = out_rx.recv() => match l { Some(l) => l, None => break },
                };
                let mut post = client.post(endpoint.clone());
                if let Some(trace) = &trace {
                    post = trace.apply(post);
                }
                let sent =
                    post.headers(headers.clone()).header(CONTENT_TYPE, "application/json").body(line).send().await;
                match sent {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(server = %server, status = %r.status(), "legacy SSE server refused a message");
                        if r.status() == reqwest::StatusCode::NOT_FOUND {
                            writer_mux.close();
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(server = %server, error = %describe(&e), "legacy SSE post failed");
                        writer_mux.close();
                        break;
                    }
                }
            }
        });

        // Reader: stream events → the multiplexer.
        let reader_mux = mux.clone();
        let reader_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = reader_stop.cancelled() => break,
                    n = events.next() => n,
                };
                match next {
                    Some(Ok(e)) => {
                        if e.event.as_deref().is_some_and(|t| t != "message") {
                            continue;
                        }
                        if let Some(v) = e.data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                            reader_mux.on_message(v);
                        }
                    }
                    _ => break,
                }
            }
            reader_mux.close();
        });

        let info = match mux.call("initialize", Some(initialize_params()), Caller::Gateway).await {
            Ok(result) => ServerInfo::from_initialize_result(&result)?,
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        };
        mux.notify("notifications/initialized", None).await;
        Ok(SseConn { mux, info, stop })
    }

    pub fn shutdown(&self) {
        self.mux.close();
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> reqwest::Url {
        reqwest::Url::parse("http://127.0.0.1:8000/sse").unwrap()
    }

    #[test]
    fn endpoints_on_the_streams_origin_only() {
        let ok = resolve_endpoint(&stream(), " /messages?session_id=abc\n").unwrap();
        assert_eq!(ok.as_str(), "http://127.0.0.1:8000/messages?session_id=abc");
        for bad in [
            "//evil.example/x",
            "http://evil.example/messages",
            "https://127.0.0.1:8000/messages",
            "http://127.0.0.1:8001/messages",
            "http://user:pw@127.0.0.1:8000/messages",
            "\\\\evil.example\\x",
            "http://127.0.0.1:8000@evil.example/",
        ] {
            assert!(resolve_endpoint(&stream(), bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a server puts in its endpoint event, the result is on
        /// the stream's origin or refused.
        #[test]
        fn any_endpoint_is_on_the_streams_origin_or_refused(data in "\\PC{0,60}", prefix in "(|/|//|\\\\|http://|https://|http:|/\\\\)") {
            let data = format!("{prefix}{data}");
            if let Ok(url) = resolve_endpoint(&stream(), &data) {
                proptest::prop_assert_eq!(url.origin(), stream().origin());
                proptest::prop_assert!(url.username().is_empty() && url.password().is_none());
            }
        }
    }
}
