"""For each enforced field of the inventory (meshlib.policy.inventory), a test that fails if
the field were ignored: "path": "tests/file.py::test_name".

Not mapped yet, on purpose (test_every_enforced_field_names_a_test_that_exists lists them as
missing until then): every ``ServiceEntry.*`` path and every path under
``DestinationRule.trafficPolicy.tls.``, which are being changed on their own branches; they
are mapped when those branches land. ``VirtualService.http.match.name`` is not mapped
either: meshlib reads it nowhere (no access log, no metric names a match), so no test can
fail when it is ignored; it waits for a decision (refuse it, or use it)."""

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
_NEW = "tests/test_field_semantics.py"
_LOCALITY = "tests/core/test_locality.py"
_LOADER = "tests/policy/test_loader.py"
_STICKY = f"{_ROUTING}::test_sticky_cookie_with_ttl_is_made_up_set_and_then_followed"

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
    # Refused by validation (Istio rejects it too): the refusal is what there is to test.
    "VirtualService.http.fault.delay.exponentialDelay": f"{_LOADER}::test_exponential_delay_is_refused",
    "VirtualService.http.fault.delay.percentage.value": f"{_STACK}::test_fault_delay",
    "VirtualService.http.fault.delay.percent": (
        f"{_PLANE}::test_fault_without_percentage_applies_to_no_request"
    ),
    "VirtualService.http.fault.abort.httpStatus": f"{_STACK}::test_fault_abort_answers_without_sending",
    "VirtualService.http.fault.abort.grpcStatus": f"{_STACK}::test_fault_abort_grpc",
    "VirtualService.http.fault.abort.http2Error": f"{_LOADER}::test_http2_error_is_refused",
    "VirtualService.http.mirrorPercent": f"{_PLANE}::test_mirrors_and_their_shares",
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
    "DestinationRule.subsets.name": f"{_STACK}::test_subset_routes_to_its_endpoints",
    "DestinationRule.subsets.labels": f"{_PLANE}::test_cluster_filters_endpoints_by_subset_labels",
    "DestinationRule.exportTo": "tests/http/test_scoping.py::test_export_to_names_namespaces_and_tilde_hides",
    "DestinationRule.workloadSelector.matchLabels": (
        "tests/http/test_scoping.py::test_workload_selector_rules_apply_to_the_workloads_they_select"
    ),
    # --- PeerAuthentication ---
    "PeerAuthentication.mtls.mode": "tests/test_mtls.py::test_strict_refuses_plaintext_and_says_why",
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
    # --- RateLimit ---
    "RateLimit.limits.per": f"{_RATE}::test_limits_per_source_principal_on_every_server",
    "RateLimit.limits.tokenBucket.maxTokens": f"{_RATE}::test_a_limit_on_a_route_only",
    "RateLimit.limits.tokenBucket.tokensPerFill": f"{_NEW}::test_tokens_per_fill_is_what_each_fill_adds",
    "RateLimit.limits.tokenBucket.fillInterval": f"{_RATE}::test_the_answer_says_when_to_come_back",
}
