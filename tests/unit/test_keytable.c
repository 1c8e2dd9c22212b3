/* The limiter's key table and the queues it coalesces checks in (the checks of a key that wait
 * behind its call in flight go out together in its next call): pure logic, no Redis. */
#include "check.h"
#include "keytable.h"

static const uint8_t alice[16] = {1, 2, 3};
static const uint8_t bob[16] = {9, 9, 9};

TEST(the_same_user_and_provider_find_the_same_entry)
{
    struct keytable t;
    keytable_init(&t, 64);
    struct keytable_entry *a = keytable_get(&t, alice, "openai", 6, "", 0, 1);
    CHECK(a != NULL);
    CHECK(keytable_get(&t, alice, "openai", 6, "", 0, 2) == a);
    CHECK_EQ_INT(a->last_used_ms, 2);
    CHECK_EQ_INT(t.count, 1);
    keytable_free(&t);
}

TEST(another_provider_model_or_user_is_another_entry)
{
    struct keytable t;
    keytable_init(&t, 64);
    struct keytable_entry *a = keytable_get(&t, alice, "openai", 6, "", 0, 1);
    struct keytable_entry *b = keytable_get(&t, alice, "anthropic", 9, "", 0, 1);
    struct keytable_entry *c = keytable_get(&t, bob, "openai", 6, "", 0, 1);
    struct keytable_entry *p = keytable_get(&t, alice, "openai-x", 8, "", 0, 1);
    struct keytable_entry *m = keytable_get(&t, alice, "openai", 6, "gpt-4o", 6, 1);
    struct keytable_entry *m2 = keytable_get(&t, alice, "openai", 6, "gpt-4o-mini", 11, 1);
    CHECK(a && b && c && p && m && m2);
    CHECK(a != b && a != c && b != c && p != a && m != a && m2 != m);
    CHECK(keytable_get(&t, alice, "openai", 6, "gpt-4o", 6, 2) == m);
    CHECK_EQ_INT(t.count, 6);
    keytable_free(&t);
}

/* A table smaller than the probe count: every key probes every slot. */
static void fill(struct keytable *t, uint64_t first_ms)
{
    for (uint8_t i = 0; i < 4; i++) {
        uint8_t user[16] = {i};
        CHECK(keytable_get(t, user, "p", 1, "", 0, first_ms + i) != NULL);
    }
}

TEST(a_full_table_evicts_the_least_recently_used_idle_entry)
{
    struct keytable t;
    keytable_init(&t, 4);
    fill(&t, 100);
    uint8_t newcomer[16] = {42};
    struct keytable_entry *e = keytable_get(&t, newcomer, "p", 1, "", 0, 200);
    CHECK(e != NULL && e->user_id[0] == 42);
    /* The oldest (user 0, used at 100) made room; the others are still there. */
    for (uint8_t i = 1; i < 4; i++) {
        uint8_t user[16] = {i};
        struct keytable_entry *k = keytable_get(&t, user, "p", 1, "", 0, 300);
        CHECK(k != NULL && k->last_used_ms == 300 && k != e);
    }
    /* User 0 (used at 100, the oldest) made room. */
    for (uint32_t i = 0; i < t.capacity; i++)
        CHECK(t.slots[i].user_id[0] != 0);
    keytable_free(&t);
}

TEST(an_entry_with_a_call_in_flight_or_checks_queued_is_never_evicted)
{
    struct keytable t;
    keytable_init(&t, 4);
    fill(&t, 100);
    struct limiter_check waiting[4] = {{0}};
    for (uint8_t i = 0; i < 4; i++) {
        uint8_t user[16] = {i};
        struct keytable_entry *k = keytable_get(&t, user, "p", 1, "", 0, 100 + i);
        if (i % 2)
            k->inflight = true;
        else
            keytable_queue(k, &waiting[i]);
    }
    uint8_t newcomer[16] = {42};
    CHECK(keytable_get(&t, newcomer, "p", 1, "", 0, 200) == NULL);
    keytable_free(&t);
}

TEST(queued_checks_are_taken_in_arrival_order_up_to_the_maximum)
{
    struct keytable t;
    keytable_init(&t, 16);
    struct keytable_entry *k = keytable_get(&t, alice, "openai", 6, "", 0, 1);
    struct limiter_check c[5] = {{.amounts.cost = 1},
                                 {.amounts.cost = 2},
                                 {.amounts.cost = 3},
                                 {.amounts.cost = 4},
                                 {.amounts.cost = 5}};
    for (int i = 0; i < 5; i++)
        keytable_queue(k, &c[i]);
    CHECK_EQ_INT(k->queued, 5);
    struct limiter_check *head, *tail;
    CHECK_EQ_INT(keytable_take(k, 3, &head, &tail), 3);
    CHECK(head == &c[0] && head->next == &c[1] && head->next->next == &c[2]);
    CHECK(tail == &c[2] && tail->next == NULL);
    CHECK_EQ_INT(k->queued, 2);
    /* A check queued after a take goes behind the ones still waiting. */
    struct limiter_check late = {.amounts.cost = 6};
    keytable_queue(k, &late);
    CHECK_EQ_INT(keytable_take(k, 10, &head, &tail), 3);
    CHECK(head == &c[3] && head->next == &c[4] && head->next->next == &late);
    CHECK(tail == &late);
    CHECK(k->queue == NULL && k->queue_tail == NULL && k->queued == 0);
    CHECK_EQ_INT(keytable_take(k, 10, &head, &tail), 0);
    CHECK(head == NULL && tail == NULL);
    keytable_free(&t);
}

int main(void)
{
    return RUN(T(the_same_user_and_provider_find_the_same_entry),
               T(another_provider_model_or_user_is_another_entry),
               T(a_full_table_evicts_the_least_recently_used_idle_entry),
               T(an_entry_with_a_call_in_flight_or_checks_queued_is_never_evicted),
               T(queued_checks_are_taken_in_arrival_order_up_to_the_maximum));
}
