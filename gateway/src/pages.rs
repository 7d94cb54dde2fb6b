//! Responses the gateway itself makes, with APISIX's bodies: the router's
//! 404 JSON and nginx's error pages (as APISIX's OpenResty sends them) for
//! upstream failures.

use http::HeaderValue;
use hyper::Response;

use crate::listener::{full, Body};

/// APISIX's answer when no route matches.
pub fn not_found() -> Response<Body> {
    json_response(
        404,
        &serde_json::json!({"error_msg": "404 Route Not Found"}),
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        413 => "Request Entity Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => "Error",
    }
}

/// nginx's error page for `status`, with APISIX's footer.
pub fn error_page(status: u16) -> Response<Body> {
    let r = reason(status);
    let body = format!(
        "<html>\r\n<head><title>{status} {r}</title></head>\r\n<body>\r\n<center><h1>{status} {r}</h1></center>\r\n<hr><center>openresty</center>\r\n<p><em>Powered by <a href=\"https://apisix.apache.org/\">APISIX</a>.</em></p></body>\r\n</html>\r\n"
    );
    let mut resp = Response::new(full(body));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// A JSON body (with a trailing newline, as APISIX) and its status.
pub fn json_response(status: u16, v: &serde_json::Value) -> Response<Body> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(crate::listener::full(body));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
