//! The table of Admin API resources. One generic handler (`admin`) serves
//! them all; everything that differs between resources is a field here.

/// One resource kind, e.g. routes.
#[derive(Debug)]
pub struct Resource {
    /// Path segment and key segment: `/apisix/admin/<name>`, `<prefix>/<name>/<id>`.
    pub name: &'static str,
    /// As APISIX names it in messages ("failed to fetch upstream info …").
    pub singular: &'static str,
    /// JSON Schema (`schemas/<name>.json`; `$defs` are added from `defs.json`).
    pub schema: &'static str,
    /// The field of the value that holds the id, when APISIX keeps it there
    /// (`id`, or `username` for consumers, whose id is the user name).
    pub id_field: Option<&'static str>,
    /// Path segments the id spans (secrets: `vault/1`).
    pub id_segments: usize,
    /// Whether `create_time`/`update_time` are kept (not for plugin_metadata).
    pub timestamps: bool,
    /// Whether POST (generated id) is allowed.
    pub post: bool,
    /// Whether PATCH is allowed (APISIX refuses it on consumers, plugin
    /// metadata, stream routes and protos).
    pub patch: bool,
    /// Fields naming another resource that must exist: (field, resource name).
    /// Deleting a resource still named this way is refused without `?force=true`.
    pub refs: &'static [(&'static str, &'static str)],
    /// Field-presence rules checked before the schema, for clear messages.
    pub rules: &'static [Rule],
}

/// A rule about which top-level fields must be present.
#[derive(Debug)]
pub enum Rule {
    /// Exactly one of these.
    ExactlyOne(&'static [&'static str]),
    /// At least one of these.
    AtLeastOne(&'static [&'static str]),
    /// Not more than one of these.
    AtMostOne(&'static [&'static str]),
}

macro_rules! schema {
    ($name:literal) => {
        include_str!(concat!("schemas/", $name, ".json"))
    };
}

/// Every resource, in the order the console and OpenAPI list them.
pub static RESOURCES: &[Resource] = &[
    Resource {
        name: "routes",
        singular: "route",
        schema: schema!("routes"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: true,
        patch: true,
        refs: &[
            ("upstream_id", "upstreams"),
            ("service_id", "services"),
            ("plugin_config_id", "plugin_configs"),
        ],
        rules: &[
            Rule::ExactlyOne(&["uri", "uris"]),
            Rule::AtLeastOne(&["plugins", "upstream", "upstream_id", "service_id", "script"]),
            Rule::AtMostOne(&["host", "hosts"]),
            Rule::AtMostOne(&["remote_addr", "remote_addrs"]),
            Rule::AtMostOne(&["script", "plugins"]),
            Rule::AtMostOne(&["script", "plugin_config_id"]),
        ],
    },
    Resource {
        name: "upstreams",
        singular: "upstream",
        schema: schema!("upstreams"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: true,
        patch: true,
        refs: &[],
        rules: &[Rule::ExactlyOne(&["nodes", "service_name"])],
    },
    Resource {
        name: "services",
        singular: "service",
        schema: schema!("services"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: true,
        patch: true,
        refs: &[("upstream_id", "upstreams")],
        rules: &[],
    },
    Resource {
        name: "consumers",
        singular: "consumer",
        schema: schema!("consumers"),
        id_field: Some("username"),
        id_segments: 1,
        timestamps: true,
        post: false,
        patch: false,
        refs: &[("group_id", "consumer_groups")],
        rules: &[],
    },
    Resource {
        name: "ssls",
        singular: "ssl",
        schema: schema!("ssls"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: true,
        patch: true,
        refs: &[],
        // A server certificate also needs one of them (`validate::check_ssl`).
        rules: &[Rule::AtMostOne(&["sni", "snis"])],
    },
    Resource {
        name: "global_rules",
        singular: "global rule",
        schema: schema!("global_rules"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: false,
        patch: true,
        refs: &[],
        rules: &[],
    },
    Resource {
        name: "plugin_configs",
        singular: "plugin config",
        schema: schema!("plugin_configs"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: false,
        patch: true,
        refs: &[],
        rules: &[],
    },
    Resource {
        name: "consumer_groups",
        singular: "consumer group",
        schema: schema!("consumer_groups"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: false,
        patch: true,
        refs: &[],
        rules: &[],
    },
    Resource {
        name: "plugin_metadata",
        singular: "plugin metadata",
        schema: schema!("plugin_metadata"),
        id_field: None,
        id_segments: 1,
        timestamps: false,
        post: false,
        patch: false,
        refs: &[],
        rules: &[],
    },
    Resource {
        name: "stream_routes",
        singular: "stream route",
        schema: schema!("stream_routes"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: true,
        patch: false,
        refs: &[("upstream_id", "upstreams"), ("service_id", "services")],
        rules: &[],
    },
    Resource {
        name: "secrets",
        singular: "secret",
        schema: schema!("secrets"),
        id_field: Some("id"),
        id_segments: 2,
        timestamps: true,
        post: false,
        patch: true,
        refs: &[],
        rules: &[],
    },
    Resource {
        name: "protos",
        singular: "proto",
        schema: schema!("protos"),
        id_field: Some("id"),
        id_segments: 1,
        timestamps: true,
        post: true,
        patch: false,
        refs: &[],
        rules: &[],
    },
];

pub fn find(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name == name)
}

/// APISIX's id rule: 1–64 characters of `[a-zA-Z0-9-_.]`.
pub fn valid_id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A consumer's credentials (`/apisix/admin/consumers/<name>/credentials/<id>`,
/// stored at `<prefix>/consumers/<name>/credentials/<id>`): not a top-level
/// resource, so not in [`RESOURCES`]. Its id is `<name>/credentials/<id>`.
pub static CREDENTIALS: Resource = Resource {
    name: "consumers",
    singular: "credential",
    schema: schema!("credentials"),
    id_field: Some("id"),
    id_segments: 3,
    timestamps: true,
    post: false,
    patch: false,
    refs: &[],
    rules: &[],
};
