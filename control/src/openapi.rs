//! `GET /openapi.json`: the OpenAPI 3.1 document, built from the resource
//! table (so every resource the handler serves is described, and nothing
//! else) and from the `ToSchema` types of the answers.

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    Required,
};

use crate::admin::history::Version;
use crate::audit::AuditRecord;
use crate::resources::RESOURCES;

/// APISIX's item envelope.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct Item {
    /// The store key, `<prefix>/<resource>/<id>`.
    key: String,
    /// The resource, as stored.
    value: Value,
    createdIndex: i64,
    modifiedIndex: i64,
}

/// APISIX's list envelope.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct List {
    total: usize,
    list: Vec<Item>,
}

/// An error answer.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error_msg: String,
    description: Option<String>,
}

/// The answer to a delete.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Deleted {
    deleted: String,
    key: String,
}

fn json_response(desc: &str, schema: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(desc)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
}

fn param(name: &str, at: ParameterIn, desc: &str, ty: Type) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at.clone())
        .required(if matches!(at, ParameterIn::Path) {
            Required::True
        } else {
            Required::False
        })
        .description(Some(desc))
        .schema(Some(ObjectBuilder::new().schema_type(ty)))
        .build()
}

fn op(res: &str, summary: String, id: String) -> OperationBuilder {
    OperationBuilder::new()
        .tag(res)
        .summary(Some(summary))
        .operation_id(Some(id))
        .response(
            "400",
            json_response("invalid configuration (nothing written)", "ErrorBody"),
        )
        .response(
            "401",
            json_response("missing or wrong API key", "ErrorBody"),
        )
        .response(
            "403",
            json_response("role viewer may only read", "ErrorBody"),
        )
        .response(
            "503",
            json_response("the store is unavailable", "ErrorBody"),
        )
}

fn body(res: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .description(Some(format!(
            "The {res} as JSON; its schema is at GET /apisix/admin/schema/{res}"
        )))
        .required(Some(Required::True))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                .build(),
        )
        .build()
}

pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let id = || param("id", ParameterIn::Path, "resource id", Type::String);
    let if_match = || {
        param(
            "If-Match",
            ParameterIn::Header,
            "modifiedIndex the edit is based on; another value gives 409",
            Type::Integer,
        )
    };
    for r in RESOURCES {
        let n = r.name;
        let mut coll = PathItem::new(
            HttpMethod::Get,
            op(n, format!("List {n}"), format!("list_{n}"))
                .parameter(param(
                    "page",
                    ParameterIn::Query,
                    "page number (with page_size)",
                    Type::Integer,
                ))
                .parameter(param(
                    "page_size",
                    ParameterIn::Query,
                    "10-500 (with page)",
                    Type::Integer,
                ))
                .parameter(param(
                    "name",
                    ParameterIn::Query,
                    "name contains",
                    Type::String,
                ))
                .parameter(param(
                    "uri",
                    ParameterIn::Query,
                    "uri or uris contain",
                    Type::String,
                ))
                .parameter(param(
                    "label",
                    ParameterIn::Query,
                    "k or k:v, comma-separated",
                    Type::String,
                ))
                .response("200", json_response("the list", "List")),
        );
        if r.post {
            coll.merge_operations(PathItem::new(
                HttpMethod::Post,
                op(
                    n,
                    format!("Create a {} with a generated id", r.singular),
                    format!("create_{n}"),
                )
                .request_body(Some(body(n)))
                .parameter(param(
                    "ttl",
                    ParameterIn::Query,
                    "seconds until the key expires",
                    Type::Integer,
                ))
                .response("201", json_response("created", "Item")),
            ));
        }
        paths = paths.path(format!("/apisix/admin/{n}"), coll);
        let mut item = PathItem::new(
            HttpMethod::Get,
            op(n, format!("Get a {}", r.singular), format!("get_{n}"))
                .parameter(id())
                .response("200", json_response("the item", "Item")),
        );
        for (m, mname, verb, ok) in [
            (
                HttpMethod::Put,
                "put",
                "Create or replace",
                "201 created, 200 replaced",
            ),
            (HttpMethod::Patch, "patch", "Merge-patch", "patched"),
        ] {
            item.merge_operations(PathItem::new(
                m,
                op(
                    n,
                    format!("{verb} a {}", r.singular),
                    format!("{mname}_{n}"),
                )
                .parameter(id())
                .parameter(if_match())
                .parameter(param(
                    "ttl",
                    ParameterIn::Query,
                    "seconds until the key expires",
                    Type::Integer,
                ))
                .request_body(Some(body(n)))
                .response("200", json_response(ok, "Item"))
                .response(
                    "409",
                    json_response("changed since If-Match / the read", "ErrorBody"),
                ),
            ));
        }
        item.merge_operations(PathItem::new(
            HttpMethod::Delete,
            op(n, format!("Delete a {}", r.singular), format!("delete_{n}"))
                .parameter(id())
                .parameter(param(
                    "force",
                    ParameterIn::Query,
                    "true: delete even if still referenced",
                    Type::Boolean,
                ))
                .response("200", json_response("deleted", "Deleted")),
        ));
        paths = paths.path(format!("/apisix/admin/{n}/{{id}}"), item);
        paths = paths.path(
            format!("/apisix/admin/{n}/{{id}}/history"),
            PathItem::new(
                HttpMethod::Get,
                op(
                    n,
                    format!("Versions of a {}, newest first", r.singular),
                    format!("history_{n}"),
                )
                .parameter(id())
                .response("200", json_response("versions", "Version")),
            ),
        );
        paths = paths.path(
            format!("/apisix/admin/{n}/{{id}}/rollback"),
            PathItem::new(
                HttpMethod::Post,
                op(
                    n,
                    format!("Restore an earlier version of a {}", r.singular),
                    format!("rollback_{n}"),
                )
                .parameter(id())
                .parameter(param(
                    "revision",
                    ParameterIn::Query,
                    "the version's revision",
                    Type::Integer,
                ))
                .response("200", json_response("restored as a new revision", "Item")),
            ),
        );
    }
    paths = paths.path(
        "/api/audit",
        PathItem::new(
            HttpMethod::Get,
            op("cairn", "Audit log, newest first".into(), "audit".into())
                .parameter(param(
                    "limit",
                    ParameterIn::Query,
                    "at most this many (200)",
                    Type::Integer,
                ))
                .response("200", json_response("records", "AuditRecord")),
        ),
    );
    for (path, summary) in [
        ("/healthz", "200 while the process lives"),
        (
            "/readyz",
            "200 while a store quorum answers a linearizable read, else 503",
        ),
        ("/metrics", "Prometheus text"),
        (
            "/api/cluster",
            "Every store member: role, term, applied index, db size, health",
        ),
    ] {
        paths = paths.path(
            path,
            PathItem::new(
                HttpMethod::Get,
                OperationBuilder::new()
                    .tag("cairn")
                    .summary(Some(summary))
                    .response("200", ResponseBuilder::new().description("ok").build()),
            ),
        );
    }
    let components = ComponentsBuilder::new()
        .schema_from::<Item>()
        .schema_from::<List>()
        .schema_from::<ErrorBody>()
        .schema_from::<Deleted>()
        .schema_from::<Version>()
        .schema_from::<AuditRecord>()
        .security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-KEY"))),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cairn control plane")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "APISIX Admin API compatible, plus history, rollback and audit",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .security(Some([SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]))
        .build()
}

pub async fn serve() -> Json<OpenApi> {
    Json(document())
}
