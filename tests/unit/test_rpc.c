/* The MessagePack-RPC envelope: what is a request, a notification, and what is neither. */
#include "check.h"
#include "rpc.h"

#include <stdarg.h>

/* Packs a message from a tiny description, decodes it, and classifies it. */
struct decoded {
    msgpack_sbuffer sb;
    msgpack_unpacked u;
};

static void decode(struct decoded *d)
{
    msgpack_unpacked_init(&d->u);
    size_t off = 0;
    msgpack_unpack_next(&d->u, d->sb.data, d->sb.size, &off);
}

static void done(struct decoded *d)
{
    msgpack_unpacked_destroy(&d->u);
    msgpack_sbuffer_destroy(&d->sb);
}

static msgpack_packer start(struct decoded *d)
{
    msgpack_sbuffer_init(&d->sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &d->sb, msgpack_sbuffer_write);
    return pk;
}

TEST(a_request_yields_its_msgid_method_and_params)
{
    struct decoded d;
    msgpack_packer pk = start(&d);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, 4000000000u);
    rpc_pack_str(&pk, "check");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_nil(&pk);
    decode(&d);
    struct rpc_message m;
    struct rpc_error e;
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_VALID);
    CHECK_EQ_INT(m.kind, RPC_KIND_REQUEST);
    CHECK_EQ_INT(m.msgid, 4000000000u);
    CHECK_EQ_INT(m.method, RPC_CHECK);
    CHECK_EQ_INT(m.params->size, 1);
    done(&d);
}

TEST(a_notification_yields_its_method)
{
    struct decoded d;
    msgpack_packer pk = start(&d);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, 2);
    rpc_pack_str(&pk, "log_usage");
    msgpack_pack_array(&pk, 0);
    decode(&d);
    struct rpc_message m;
    struct rpc_error e;
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_VALID);
    CHECK_EQ_INT(m.kind, RPC_KIND_NOTIFICATION);
    CHECK_EQ_INT(m.method, RPC_LOG_USAGE);
    done(&d);
}

TEST(an_unknown_method_is_valid_for_the_dispatcher_to_answer)
{
    struct decoded d;
    msgpack_packer pk = start(&d);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 1);
    rpc_pack_str(&pk, "pingg");
    msgpack_pack_array(&pk, 0);
    decode(&d);
    struct rpc_message m;
    struct rpc_error e;
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_VALID);
    CHECK_EQ_INT(m.method, RPC_METHOD_UNKNOWN);
    done(&d);
}

TEST(a_request_with_params_that_are_not_an_array_is_answered_with_bad_request)
{
    struct decoded d;
    msgpack_packer pk = start(&d);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 9);
    rpc_pack_str(&pk, "ping");
    msgpack_pack_map(&pk, 0);
    decode(&d);
    struct rpc_message m;
    struct rpc_error e;
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_ANSWER_ERROR);
    CHECK_EQ_INT(m.msgid, 9);
    CHECK_EQ_INT(e.code, RPC_BAD_REQUEST);
    done(&d);
}

TEST(objects_that_are_not_envelopes_get_the_error_notification)
{
    struct decoded d;
    struct rpc_message m;
    struct rpc_error e;

    msgpack_packer pk = start(&d); /* a bare integer */
    msgpack_pack_uint8(&pk, 3);
    decode(&d);
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_NOTIFY_ERROR);
    CHECK_EQ_INT(e.code, RPC_BAD_REQUEST);
    done(&d);

    pk = start(&d); /* a response sent by a client */
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_nil(&pk);
    msgpack_pack_nil(&pk);
    decode(&d);
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_NOTIFY_ERROR);
    done(&d);

    pk = start(&d); /* a request whose msgid does not fit uint32 */
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint64(&pk, 1ULL << 32);
    rpc_pack_str(&pk, "ping");
    msgpack_pack_array(&pk, 0);
    decode(&d);
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_NOTIFY_ERROR);
    done(&d);

    pk = start(&d); /* a request of three elements */
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 1);
    rpc_pack_str(&pk, "ping");
    decode(&d);
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_NOTIFY_ERROR);
    done(&d);
}

TEST(a_notification_with_a_bad_method_or_params_is_dropped)
{
    struct decoded d;
    struct rpc_message m;
    struct rpc_error e;
    msgpack_packer pk = start(&d);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, 2);
    msgpack_pack_uint8(&pk, 5);
    msgpack_pack_array(&pk, 0);
    decode(&d);
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_DROP_NOTIFICATION);
    done(&d);

    pk = start(&d);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, 2);
    rpc_pack_str(&pk, "log_usage");
    msgpack_pack_nil(&pk);
    decode(&d);
    CHECK_EQ_INT(rpc_parse(&d.u.data, &m, &e), RPC_DROP_NOTIFICATION);
    done(&d);
}

TEST(an_error_response_carries_code_message_and_the_extra_keys_of_its_code)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    struct rpc_error e;
    rpc_error_set(&e, RPC_INVALID_FIELD, "user_id must be a uuid");
    e.field = "user_id";
    e.index = 3;
    rpc_pack_error_response(&pk, 12, &e);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    CHECK_EQ_INT(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    msgpack_object *a = u.data.via.array.ptr;
    CHECK_EQ_INT(u.data.via.array.size, 4);
    CHECK_EQ_INT(a[0].via.u64, 1);
    CHECK_EQ_INT(a[1].via.u64, 12);
    CHECK_EQ_INT(a[2].type, MSGPACK_OBJECT_MAP);
    CHECK_EQ_INT(a[2].via.map.size, 4);
    CHECK(rpc_str_eq(&a[2].via.map.ptr[0].key, "code"));
    CHECK(rpc_str_eq(&a[2].via.map.ptr[0].val, "invalid_field"));
    CHECK(rpc_str_eq(&a[2].via.map.ptr[2].key, "field"));
    CHECK(rpc_str_eq(&a[2].via.map.ptr[2].val, "user_id"));
    CHECK(rpc_str_eq(&a[2].via.map.ptr[3].key, "index"));
    CHECK_EQ_INT(a[2].via.map.ptr[3].val.via.u64, 3);
    CHECK_EQ_INT(a[3].type, MSGPACK_OBJECT_NIL);
    msgpack_unpacked_destroy(&u);

    msgpack_sbuffer_clear(&sb);
    rpc_error_set(&e, RPC_OVERLOADED, "queue full");
    e.retry_after_ms = 250;
    rpc_pack_error_notification(&pk, &e);
    msgpack_unpacked_init(&u);
    off = 0;
    CHECK_EQ_INT(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    a = u.data.via.array.ptr;
    CHECK_EQ_INT(a[0].via.u64, 2);
    CHECK(rpc_str_eq(&a[1], "error"));
    msgpack_object *map = &a[2].via.array.ptr[0];
    CHECK_EQ_INT(map->via.map.size, 3);
    CHECK(rpc_str_eq(&map->via.map.ptr[2].key, "retry_after_ms"));
    CHECK_EQ_INT(map->via.map.ptr[2].val.via.u64, 250);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    return RUN(T(a_request_yields_its_msgid_method_and_params), T(a_notification_yields_its_method),
               T(an_unknown_method_is_valid_for_the_dispatcher_to_answer),
               T(a_request_with_params_that_are_not_an_array_is_answered_with_bad_request),
               T(objects_that_are_not_envelopes_get_the_error_notification),
               T(a_notification_with_a_bad_method_or_params_is_dropped),
               T(an_error_response_carries_code_message_and_the_extra_keys_of_its_code));
}
