/* check: the smallest test harness that reads like a specification.
 *
 *   TEST(frame_refuses_an_array_declaring_more_elements_than_bytes_left) { ... CHECK(x); }
 *   int main(void) { return RUN(T(test_a), T(test_b)); }
 *
 * A failed CHECK prints the file, line and expression and marks the test failed; the test goes on
 * so that one run shows every broken expectation. */
#ifndef USAGED_TEST_CHECK_H
#define USAGED_TEST_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int check_failures;

#define TEST(name) static void name(void)

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        if (!(expr)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #expr);               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        if (check_a_ != check_b_) {                                                                \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,  \
                    check_a_, check_b_);                                                           \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *check_a_ = (a), *check_b_ = (b);                                               \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {                           \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, #a,  \
                    #b, check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)");           \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

/* True when haystack contains needle. */
static inline int check_contains(const char *haystack, const char *needle)
{
    return haystack && needle && strstr(haystack, needle) != NULL;
}

typedef void (*check_test_fn)(void);

struct check_case {
    check_test_fn fn;
    const char *name;
};

/* One entry of RUN's list. */
#define T(fn)                                                                                      \
    {                                                                                              \
        fn, #fn                                                                                    \
    }

static inline int check_run(const struct check_case *cases, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        int before = check_failures;
        cases[i].fn();
        if (check_failures != before)
            fprintf(stderr, "FAIL %s\n", cases[i].name);
    }
    if (check_failures) {
        fprintf(stderr, "%d check(s) failed\n", check_failures);
        return 1;
    }
    printf("%zu tests passed\n", count);
    return 0;
}

#define RUN(...)                                                                                   \
    check_run((struct check_case[]){__VA_ARGS__},                                                  \
              sizeof((struct check_case[]){__VA_ARGS__}) / sizeof(struct check_case))

#endif
