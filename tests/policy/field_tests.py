"""For each enforced field of the inventory (meshlib.policy.inventory), a test that fails if
the field were ignored: "path": "tests/file.py::test_name".

Labels (``inventory.LABELS``, such as ``VirtualService.http.match.name``) change no request,
in Istio either, and are not mapped."""

from __future__ import annotations

_TLS = "tests/test_tls_origination.py"
_ROUTING = "tests/http/test_routing.py"
_RESILIENCE = "tests/http/test_resilience.py"
_LIFETIME = "tests/http/test_connection_lifetime.py"
_STACK = "tests/core/test_client_stack.py"
_PLANE = "tests/core/test_dataplane.py"
_MATCHING = "tests/core/test_matching.py"
_BALANCER = "tests/core/test_balancer.py"
_OUTLIER = "tests/core/test_outlier.py"
_AUTHZ = "tests/core/test_authz.py"
_AUTHORIZATION = "tests/test_authorization.py"
_JWT = "tests/test_request_authentication.py"
_RATE = "tests/test_rate_limit.py"
_TELEMETRY = "tests/telemetry/test_telemetry_policy.py"
_BOTH_SIDES = "test_access_logs_and_tracing_follow_the_policy_on_both_sides"
_NEW = "tests/test_field_semantics.py"
_LOCALITY = "tests/core/test_locality.py"
_STICKY = f"{_ROUTING}::test_sticky_cookie_with_ttl_is_made_up_set_and_then_followed"
_SNAPSHOT = "tests/core/test_snapshot.py"
_TRAFFIC = "tests/http/test_traffic.py"
_SLOW = "tests/core/test_slow_start.py"
_SE_HTTP = "tests/http/test_service_entries.py"
_SE_CORE = "tests/core/test_service_entry_routing.py"
_SE_PORTS = f"{_PLANE}::test_service_entry_target_port_and_endpoint_port_override"
_SE_IDENTITY = f"{_SE_CORE}::test_endpoint_identity_from_service_account_or_subject_alt_name"
_SE_SELECTOR = f"{_SE_CORE}::test_a_workload_selector_takes_each_port_from_its_target_port"
_EXAMPLES = f"{_AUTHORIZATION}::test_istio_examples_on_every_server"

EXERCISED: dict[str, str] = {
    # --- VirtualService ---
    "VirtualService.hosts": f"{_ROUTING}::test_short_fqdn_and_namespaced_hosts_reach_the_same_service",
    "VirtualService.gateways": f"{_PLANE}::test_virtual_service_bound_to_gateways_only_is_ignored",
    # A label in Istio (access logs); meshlib carries it as the compiled Route's name, which the
    # Exchange hands to client-stack filters.
    "VirtualService.http.name": f"{_PLANE}::test_routes_are_kept_per_host_in_order",
    "VirtualService.http.match.uri.exact": f"{_MATCHING}::test_uri",
    "VirtualService.http.match.uri.prefix": f"{_MATCHING}::test_uri",
    "VirtualService.http.match.uri.regex": f"{_MATCHING}::test_uri",
    "VirtualService.http.match.scheme": f"{_MATCHING}::test_request_attributes",
    "VirtualService.http.match.method": f"{_MATCHING}::test_request_attributes",
    "VirtualService.http.match.authority": f"{_MATCHING}::test_request_attributes",
    "VirtualService.http.match.headers": f"{_MATCHING}::test_headers",
    "VirtualService.http.match.queryParams": f"{_MATCHING}::test_query_params",
    "VirtualService.http.match.withoutHeaders": f"{_MATCHING}::test_without_headers",
    "VirtualService.http.match.port": f"{_MATCHING}::test_request_attributes",
    "VirtualService.http.match.sourceLabels": f"{_MATCHING}::test_source_selection",
    "VirtualService.http.match.gateways": f"{_MATCHING}::test_source_selection",
    "VirtualService.http.match.ignoreUriCase": f"{_MATCHING}::test_ignore_uri_case",
    "VirtualService.http.match.sourceNamespace": f"{_MATCHING}::test_source_selection",
    "VirtualService.http.route.destination.host": f"{_PLANE}::test_single_destination_gets_weight_100",
    "VirtualService.http.route.destination.subset": f"{_STACK}::test_subset_routes_to_its_endpoints",
    "VirtualService.http.route.destination.port.number": f"{_PLANE}::test_destination_port_is_kept",
    "VirtualService.http.route.weight": f"{_ROUTING}::test_weighted_split_is_80_20_within_3_points",
    "VirtualService.http.route.headers.request.set": (
        f"{_ROUTING}::test_rewrite_redirect_direct_response_and_header_edits"
    ),
    "VirtualService.http.route.headers.request.add": (
        f"{_ROUTING}::test_rewrite_redirect_direct_response_and_header_edits"
    ),
    "VirtualService.http.route.headers.request.remove": (
        f"{_ROUTING}::test_rewrite_redirect_direct_response_and_header_edits"
    ),
    "VirtualService.http.route.headers.response": (
        f"{_NEW}::test_a_destinations_response_headers_edit_the_answers_it_gives"
    ),
    "VirtualService.http.headers": f"{_ROUTING}::test_rewrite_redirect_direct_response_and_header_edits",
    "VirtualService.http.redirect.uri": f"{_STACK}::test_redirect",
    "VirtualService.http.redirect.authority": f"{_STACK}::test_redirect",
    "VirtualService.http.redirect.port": f"{_STACK}::test_redirect",
    "VirtualService.http.redirect.derivePort": f"{_NEW}::test_redirect_derive_port",
    "VirtualService.http.redirect.scheme": f"{_STACK}::test_redirect",
    "VirtualService.http.redirect.redirectCode": f"{_STACK}::test_redirect",
    "VirtualService.http.redirect.prefixRewrite": (
        f"{_STACK}::test_redirect_prefix_rewrite_swaps_the_matched_prefix"
    ),
    "VirtualService.http.directResponse.status": f"{_STACK}::test_direct_response",
    "VirtualService.http.directResponse.body.string": f"{_STACK}::test_direct_response",
    "VirtualService.http.directResponse.body.bytes": (
        f"{_ROUTING}::test_direct_response_body_bytes_are_sent_decoded"
    ),
    "VirtualService.http.delegate.name": (
        f"{_ROUTING}::test_delegate_routes_replace_the_root_route_inside_its_match"
    ),
    "VirtualService.http.delegate.namespace": (
        f"{_ROUTING}::test_delegate_routes_replace_the_root_route_inside_its_match"
    ),
    "VirtualService.http.rewrite.uri": f"{_ROUTING}::test_rewrite_redirect_direct_response_and_header_edits",
    "VirtualService.http.rewrite.authority": (
        f"{_ROUTING}::test_rewrite_redirect_direct_response_and_header_edits"
    ),
    "VirtualService.http.rewrite.uriRegexRewrite.match": (
        "tests/http/test_adapter.py::test_regex_rewrite_uses_numbered_groups_and_keeps_the_query"
    ),
    "VirtualService.http.rewrite.uriRegexRewrite.rewrite": (
        "tests/http/test_adapter.py::test_regex_rewrite_uses_numbered_groups_and_keeps_the_query"
    ),
    "VirtualService.http.timeout": f"{_RESILIENCE}::test_route_timeout_is_a_mesh_timeout",
    "VirtualService.http.retries.attempts": f"{_STACK}::test_route_retry_policy_is_used",
    "VirtualService.http.retries.perTryTimeout": (
        f"{_STACK}::test_per_try_timeout_moves_on_to_another_endpoint"
    ),
    "VirtualService.http.retries.retryOn": f"{_STACK}::test_route_retry_policy_is_used",
    "VirtualService.http.retries.retryIgnorePreviousHosts": (
        f"{_RESILIENCE}::test_retry_ignore_previous_hosts_false_lets_a_retry_go_back_to_the_failed_endpoint"
    ),
    "VirtualService.http.retries.retryRemoteLocalities": (
        f"{_NEW}::test_retry_remote_localities_moves_the_retry_to_another_locality"
    ),
    "VirtualService.http.retries.backoff": f"{_STACK}::test_backoff_is_cut_short_by_the_deadline",
    "VirtualService.http.fault.delay.fixedDelay": f"{_STACK}::test_fault_delay",
    "VirtualService.http.fault.delay.percentage.value": f"{_STACK}::test_fault_delay",
    "VirtualService.http.fault.delay.percent": (
        f"{_PLANE}::test_fault_without_percentage_applies_to_no_request"
    ),
    "VirtualService.http.fault.abort.httpStatus": f"{_STACK}::test_fault_abort_answers_without_sending",
    "VirtualService.http.fault.abort.grpcStatus": f"{_STACK}::test_fault_abort_grpc",
    "VirtualService.http.fault.abort.percentage": f"{_STACK}::test_fault_abort_share",
    "VirtualService.http.mirrorPercent": f"{_PLANE}::test_mirrors_and_their_shares",
    "VirtualService.http.mirror": f"{_STACK}::test_mirror_goes_out_before_the_send",
    "VirtualService.http.mirrorPercentage": f"{_STACK}::test_mirror_percentage",
    "VirtualService.http.mirrors.destination": f"{_TRAFFIC}::test_mirror_failures_never_reach_the_caller",
    "VirtualService.http.mirrors.percentage": f"{_TRAFFIC}::test_mirror_failures_never_reach_the_caller",
    "VirtualService.exportTo": (
        "tests/http/test_scoping.py::test_export_to_dot_keeps_a_virtual_service_in_its_namespace"
    ),
    # --- DestinationRule ---
    "DestinationRule.host": (
        "tests/core/test_snapshot.py::test_traffic_policy_without_subset_is_the_rule_level_policy"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.simple": f"{_BALANCER}::test_factory_maps_each_istio_setting",
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpHeaderName": (
        f"{_RESILIENCE}::test_consistent_hash_sends_a_key_to_one_endpoint"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpCookie.name": (
        f"{_BALANCER}::test_hash_key_for_each_source"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpCookie.path": _STICKY,
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl": _STICKY,
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes.name": _STICKY,
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes.value": _STICKY,
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.useSourceIp": (
        f"{_BALANCER}::test_hash_key_for_each_source"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName": (
        f"{_BALANCER}::test_hash_key_for_each_source"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize": (
        f"{_BALANCER}::test_factory_ring_size"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize": (
        f"{_BALANCER}::test_factory_maglev_table_size"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.minimumRingSize": (
        f"{_BALANCER}::test_factory_ring_size"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting.distribute": (
        f"{_LOCALITY}::test_distribute_splits_by_locality_weight_and_drops_unlisted_localities"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting.failover": (
        f"{_LOCALITY}::test_failover_entry_puts_its_region_before_the_others"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority": (
        f"{_LOCALITY}::test_failover_priority_labels_alone_order_by_labels"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting.enabled": (
        f"{_LOCALITY}::test_failover_needs_outlier_detection_and_a_caller_locality"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.warmupDurationSecs": (
        f"{_SLOW}::test_the_first_endpoints_and_warmup_duration_secs"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.warmup.duration": (
        f"{_SLOW}::test_a_joining_endpoint_starts_at_the_minimum_and_grows_to_its_full_share"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.warmup.minimumPercent": (
        f"{_NEW}::test_warmup_minimum_percent_is_where_a_joining_endpoint_starts"
    ),
    "DestinationRule.trafficPolicy.loadBalancer.warmup.aggression": (
        f"{_NEW}::test_warmup_aggression_bends_the_ramp_of_a_joining_endpoint"
    ),
    "DestinationRule.trafficPolicy.connectionPool.tcp.maxConnections": (
        f"{_RESILIENCE}::test_pool_overflow_fails_fast_async"
    ),
    "DestinationRule.trafficPolicy.connectionPool.tcp.connectTimeout": (
        f"{_LIFETIME}::test_connect_timeout_comes_from_the_destination_rule"
    ),
    "DestinationRule.trafficPolicy.connectionPool.tcp.maxConnectionDuration": (
        f"{_LIFETIME}::test_a_connection_retires_after_max_connection_duration"
    ),
    "DestinationRule.trafficPolicy.connectionPool.tcp.idleTimeout": (
        f"{_NEW}::test_tcp_idle_timeout_retires_an_idle_connection"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.http1MaxPendingRequests": (
        f"{_RESILIENCE}::test_pool_overflow_fails_fast_async"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.http2MaxRequests": (
        f"{_RESILIENCE}::test_pool_overflow_fails_fast_sync"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.maxRequestsPerConnection": (
        f"{_LIFETIME}::test_max_requests_per_connection_opens_a_new_one_after_n"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.maxRetries": (
        f"{_STACK}::test_max_retries_in_flight_refuses_a_retry"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.idleTimeout": (
        f"{_LIFETIME}::test_an_idle_connection_is_not_reused_past_the_idle_timeout"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.h2UpgradePolicy": (
        f"{_NEW}::test_h2_upgrade_policy_takes_what_meshlib_does_and_refuses_upgrade"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors": (
        f"{_OUTLIER}::test_split_local_origin_failures_count_only_on_their_own_counter"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures": (
        f"{_OUTLIER}::test_split_any_response_resets_the_local_origin_counter"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.consecutiveGatewayErrors": (
        f"{_OUTLIER}::test_gateway_counter_counts_gateway_errors_and_local_origin_failures"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.consecutiveErrors": (
        f"{_OUTLIER}::test_deprecated_consecutive_errors_counts_gateway_errors_only_as_istio_maps_it"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.consecutive5xxErrors": (
        f"{_OUTLIER}::test_consecutive_5xx_custom_threshold"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.interval": (
        f"{_OUTLIER}::test_update_settings_keeps_decay_already_served"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.baseEjectionTime": (
        f"{_RESILIENCE}::test_failing_endpoint_is_ejected_at_its_fifth_503_and_returns"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.maxEjectionPercent": (
        f"{_OUTLIER}::test_max_ejection_percent_allows_up_to_the_share"
    ),
    "DestinationRule.trafficPolicy.outlierDetection.minHealthPercent": (
        f"{_OUTLIER}::test_min_health_percent_panics_to_all_endpoints"
    ),
    "DestinationRule.trafficPolicy.retryBudget.percent": (
        f"{_NEW}::test_retry_budget_percent_is_the_share_of_requests_retried"
    ),
    "DestinationRule.trafficPolicy.retryBudget.minRetryConcurrency": (
        f"{_STACK}::test_retry_budget_is_honoured"
    ),
    "DestinationRule.trafficPolicy.retryBudget.budgetInterval": (
        f"{_NEW}::test_retry_budget_interval_is_the_window_retries_are_counted_in"
    ),
    # portLevelSettings: each of its settings replaces the rule's on its port (9080), not on 9081.
    "DestinationRule.trafficPolicy.portLevelSettings.port": (
        f"{_NEW}::test_port_level_outlier_detection_ejects_on_its_port_only"
    ),
    "DestinationRule.trafficPolicy.portLevelSettings.loadBalancer": (
        f"{_NEW}::test_port_level_load_balancer_is_the_ports_own"
    ),
    "DestinationRule.trafficPolicy.portLevelSettings.connectionPool": (
        f"{_NEW}::test_port_level_connection_pool_limits_its_port_only"
    ),
    "DestinationRule.trafficPolicy.portLevelSettings.outlierDetection": (
        f"{_NEW}::test_port_level_outlier_detection_ejects_on_its_port_only"
    ),
    # The rule's tls is DISABLE, port 80's MUTUAL: the server requires the client certificate.
    "DestinationRule.trafficPolicy.portLevelSettings.tls": (
        f"{_TLS}::test_mutual_presents_the_client_certificate"
    ),
    "DestinationRule.subsets.name": f"{_STACK}::test_subset_routes_to_its_endpoints",
    "DestinationRule.subsets.labels": f"{_PLANE}::test_cluster_filters_endpoints_by_subset_labels",
    "DestinationRule.subsets.trafficPolicy": f"{_PLANE}::test_cluster_takes_the_subset_traffic_policy",
    "DestinationRule.exportTo": "tests/http/test_scoping.py::test_export_to_names_namespaces_and_tilde_hides",
    "DestinationRule.workloadSelector.matchLabels": (
        "tests/http/test_scoping.py::test_workload_selector_rules_apply_to_the_workloads_they_select"
    ),
    # --- PeerAuthentication ---
    "PeerAuthentication.mtls.mode": "tests/test_mtls.py::test_strict_refuses_plaintext_and_says_why",
    "PeerAuthentication.selector": f"{_SNAPSHOT}::test_peer_authentication_mode",
    "PeerAuthentication.portLevelMtls": (
        "tests/test_mtls.py::test_scopes_narrowest_wins_port_level_modes_and_tls_disable_on_the_wire"
    ),
    # --- AuthorizationPolicy ---
    "AuthorizationPolicy.targetRef.group": f"{_NEW}::test_target_ref_kind_and_group_must_be_a_core_service",
    "AuthorizationPolicy.targetRef.kind": f"{_NEW}::test_target_ref_kind_and_group_must_be_a_core_service",
    "AuthorizationPolicy.targetRef.name": f"{_NEW}::test_target_ref_names_a_service_of_the_policys_namespace",
    "AuthorizationPolicy.targetRef.namespace": (
        f"{_NEW}::test_target_ref_names_a_service_of_the_policys_namespace"
    ),
    "AuthorizationPolicy.rules.from.source.principals": (
        f"{_AUTHORIZATION}::test_istio_examples_on_every_server"
    ),
    "AuthorizationPolicy.rules.from.source.notPrincipals": (
        f"{_AUTHORIZATION}::test_istio_examples_on_every_server"
    ),
    "AuthorizationPolicy.rules.from.source.requestPrincipals": (
        f"{_AUTHZ}::test_request_principals_and_their_not_form"
    ),
    "AuthorizationPolicy.rules.from.source.notRequestPrincipals": (
        f"{_AUTHZ}::test_request_principals_and_their_not_form"
    ),
    "AuthorizationPolicy.rules.from.source.namespaces": (
        f"{_AUTHORIZATION}::test_istio_examples_on_every_server"
    ),
    "AuthorizationPolicy.rules.from.source.notNamespaces": (
        f"{_AUTHORIZATION}::test_istio_examples_on_every_server"
    ),
    "AuthorizationPolicy.rules.from.source.serviceAccounts": (
        f"{_AUTHORIZATION}::test_istio_examples_on_every_server"
    ),
    "AuthorizationPolicy.rules.from.source.notServiceAccounts": f"{_NEW}::test_not_service_accounts",
    "AuthorizationPolicy.rules.from.source.ipBlocks": (
        f"{_AUTHORIZATION}::test_istio_examples_on_every_server"
    ),
    "AuthorizationPolicy.rules.from.source.notIpBlocks": f"{_NEW}::test_not_ip_blocks",
    "AuthorizationPolicy.rules.from.source.remoteIpBlocks": (
        f"{_NEW}::test_remote_ip_blocks_are_the_connections_address"
    ),
    "AuthorizationPolicy.rules.from.source.notRemoteIpBlocks": f"{_NEW}::test_not_remote_ip_blocks",
    "AuthorizationPolicy.rules.from.source.trustDomains": (
        f"{_AUTHZ}::test_service_accounts_without_a_namespace_and_trust_domains"
    ),
    "AuthorizationPolicy.rules.from.source.notTrustDomains": (
        f"{_AUTHZ}::test_service_accounts_without_a_namespace_and_trust_domains"
    ),
    "AuthorizationPolicy.rules.to.operation.hosts": f"{_AUTHORIZATION}::test_istio_examples_on_every_server",
    "AuthorizationPolicy.rules.to.operation.notHosts": f"{_NEW}::test_not_hosts",
    "AuthorizationPolicy.rules.to.operation.ports": f"{_NEW}::test_ports_and_not_ports",
    "AuthorizationPolicy.rules.to.operation.notPorts": f"{_NEW}::test_ports_and_not_ports",
    "AuthorizationPolicy.rules.to.operation.methods": f"{_NEW}::test_methods_and_not_methods",
    "AuthorizationPolicy.rules.to.operation.notMethods": f"{_NEW}::test_methods_and_not_methods",
    "AuthorizationPolicy.rules.to.operation.paths": f"{_AUTHORIZATION}::test_istio_examples_on_every_server",
    "AuthorizationPolicy.rules.to.operation.notPaths": f"{_NEW}::test_not_paths",
    "AuthorizationPolicy.rules.when.key": f"{_AUTHZ}::test_jwt_attributes_in_when",
    "AuthorizationPolicy.rules.when.values": f"{_AUTHORIZATION}::test_istio_examples_on_every_server",
    "AuthorizationPolicy.rules.when.notValues": f"{_AUTHZ}::test_jwt_attributes_in_when",
    "AuthorizationPolicy.action": f"{_AUTHORIZATION}::test_istio_examples_on_every_server",
    "AuthorizationPolicy.provider.name": f"{_NEW}::test_custom_action_asks_the_provider_the_policy_names",
    # The cases "selector that does not select us" and "targetRef to another Service".
    "AuthorizationPolicy.selector": _EXAMPLES,
    "AuthorizationPolicy.targetRefs": _EXAMPLES,
    # --- RequestAuthentication ---
    "RequestAuthentication.jwtRules.issuer": f"{_JWT}::test_every_bad_token_is_refused_on_every_server",
    "RequestAuthentication.jwtRules.audiences": f"{_JWT}::test_every_bad_token_is_refused_on_every_server",
    "RequestAuthentication.jwtRules.jwksUri": (
        f"{_JWT}::test_jwks_uri_is_fetched_in_the_background_and_a_hanging_one_stalls_nothing"
    ),
    "RequestAuthentication.jwtRules.jwks": f"{_JWT}::test_good_tokens_and_no_token",
    "RequestAuthentication.jwtRules.fromHeaders.name": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.fromHeaders.prefix": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.fromParams": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.fromCookies": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.outputPayloadToHeader": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.forwardOriginalToken": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.outputClaimToHeaders.header": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.outputClaimToHeaders.claim": f"{_JWT}::test_outputs_for_the_application",
    "RequestAuthentication.jwtRules.timeout": f"{_NEW}::test_jwks_fetch_timeout_bounds_each_fetch",
    "RequestAuthentication.jwtRules.spaceDelimitedClaims": (
        f"{_NEW}::test_space_delimited_claims_are_matched_word_by_word"
    ),
    "RequestAuthentication.selector": f"{_SNAPSHOT}::test_request_authentication_by_selector",
    "RequestAuthentication.targetRef": (
        f"{_NEW}::test_request_authentication_target_refs_name_the_services_it_applies_to"
    ),
    "RequestAuthentication.targetRefs": (
        f"{_NEW}::test_request_authentication_target_refs_name_the_services_it_applies_to"
    ),
    # --- DestinationRule tls (TLS origination) ---
    "DestinationRule.trafficPolicy.tls.mode": (
        f"{_TLS}::test_simple_originates_tls_for_an_http_call_with_the_rules_ca"
    ),
    "DestinationRule.trafficPolicy.tls.caCertificates": (
        f"{_TLS}::test_a_server_certificate_from_another_ca_is_refused"
    ),
    "DestinationRule.trafficPolicy.tls.caCrl": (
        f"{_TLS}::test_a_revoked_server_certificate_is_refused_by_the_ca_crl"
    ),
    "DestinationRule.trafficPolicy.tls.clientCertificate": (
        f"{_TLS}::test_mutual_presents_the_client_certificate"
    ),
    "DestinationRule.trafficPolicy.tls.privateKey": f"{_TLS}::test_mutual_presents_the_client_certificate",
    "DestinationRule.trafficPolicy.tls.credentialName": (
        f"{_TLS}::test_credential_name_is_refused_at_validation"
    ),
    "DestinationRule.trafficPolicy.tls.insecureSkipVerify": (
        f"{_TLS}::test_insecure_skip_verify_accepts_a_server_no_ca_vouches_for"
    ),
    "DestinationRule.trafficPolicy.tls.sni": (
        f"{_TLS}::test_the_rules_sni_is_sent_and_the_certificate_must_name_it"
    ),
    "DestinationRule.trafficPolicy.tls.subjectAltNames": (
        f"{_TLS}::test_subject_alt_names_the_certificate_must_carry"
    ),
    # --- Telemetry ---
    "Telemetry.selector": f"{_TELEMETRY}::{_BOTH_SIDES}",
    "Telemetry.tracing.match.mode": f"{_TELEMETRY}::test_what_meshlib_cannot_honour_is_refused",
    "Telemetry.tracing.randomSamplingPercentage": f"{_TELEMETRY}::{_BOTH_SIDES}",
    "Telemetry.tracing.disableSpanReporting": f"{_TELEMETRY}::{_BOTH_SIDES}",
    "Telemetry.tracing.enableIstioTags": f"{_TELEMETRY}::test_what_meshlib_cannot_honour_is_refused",
    "Telemetry.accessLogging.match": f"{_TELEMETRY}::{_BOTH_SIDES}",
    "Telemetry.accessLogging.providers": f"{_TELEMETRY}::test_what_meshlib_cannot_honour_is_refused",
    "Telemetry.accessLogging.disabled": f"{_TELEMETRY}::{_BOTH_SIDES}",
    "Telemetry.accessLogging.filter.expression": f"{_TELEMETRY}::{_BOTH_SIDES}",
    # --- RateLimit ---
    "RateLimit.limits.per": f"{_RATE}::test_limits_per_source_principal_on_every_server",
    "RateLimit.limits.tokenBucket.maxTokens": f"{_RATE}::test_a_limit_on_a_route_only",
    "RateLimit.limits.tokenBucket.tokensPerFill": f"{_NEW}::test_tokens_per_fill_is_what_each_fill_adds",
    "RateLimit.limits.tokenBucket.fillInterval": f"{_RATE}::test_the_answer_says_when_to_come_back",
    "RateLimit.limits.match": f"{_RATE}::test_a_limit_on_a_route_only",
    "RateLimit.selector": f"{_NEW}::test_rate_limit_selector_limits_the_workloads_it_selects",
    # --- ServiceEntry ---
    "ServiceEntry.hosts": f"{_SE_HTTP}::test_wildcard_entries_match_most_specific_first",
    "ServiceEntry.addresses": (
        f"{_SE_HTTP}::test_an_address_in_the_entry_takes_requests_to_that_ip_on_its_ports"
    ),
    "ServiceEntry.ports.number": (
        f"{_SE_CORE}::test_the_most_specific_wildcard_entry_wins_and_only_on_its_ports"
    ),
    # A GRPC port has no endpoints on the HTTP plane; the endpoint's ports are keyed by port name.
    "ServiceEntry.ports.protocol": _SE_PORTS,
    "ServiceEntry.ports.name": _SE_PORTS,
    "ServiceEntry.ports.targetPort": _SE_SELECTOR,
    "ServiceEntry.location": _SE_SELECTOR,  # MESH_EXTERNAL: no automatic mesh mTLS
    "ServiceEntry.resolution": (
        f"{_SE_HTTP}::test_dns_balances_over_every_address_and_dns_round_robin_uses_the_first"
    ),
    "ServiceEntry.endpoints.address": _SE_PORTS,
    "ServiceEntry.endpoints.ports": _SE_PORTS,
    "ServiceEntry.endpoints.labels": f"{_SNAPSHOT}::test_service_entry_endpoints_filtered_by_subset",
    "ServiceEntry.endpoints.locality": (
        f"{_RESILIENCE}::test_locality_failover_when_the_local_zones_endpoints_are_ejected"
    ),
    # The SPIFFE ID an endpoint must prove over mTLS (the network layer checks it:
    # tests/http/test_tls.py).
    "ServiceEntry.endpoints.serviceAccount": _SE_IDENTITY,
    "ServiceEntry.subjectAltNames": _SE_IDENTITY,
    "ServiceEntry.endpoints.weight": f"{_SE_HTTP}::test_endpoint_weights_are_honoured_by_the_load_balancer",
    "ServiceEntry.workloadSelector.labels": _SE_SELECTOR,
    "ServiceEntry.exportTo": f"{_SE_CORE}::test_export_to_decides_which_namespaces_see_the_entry",
}
