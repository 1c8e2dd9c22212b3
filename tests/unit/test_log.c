/* Log lines: one event per line, nothing in it a terminal would act on. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "log.h"

/* What log_warn writes for fmt/arg, without its timestamp and level. */
static const char *logged(const char *text)
{
    static char out[4096];
    FILE *f = tmpfile();
    int saved = dup(2);
    dup2(fileno(f), 2);
    log_warn("%s", text);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(f);
    size_t n = fread(out, 1, sizeof(out) - 1, f);
    fclose(f);
    out[n] = '\0';
    const char *msg = strstr(out, "warn  ");
    return msg ? msg + 6 : out;
}

TEST(control_characters_from_clients_do_not_reach_the_log_raw)
{
    CHECK_EQ_STR(logged("a\nb\rc\x1b[31md\te\x7f"), "a b c [31md e \n");
    /* U+0085 (NEL), U+2028, U+2029 */
    CHECK_EQ_STR(logged("x\xc2\x85y\xe2\x80\xa8z\xe2\x80\xa9"), "x??y???z???\n");
    /* Other text, multibyte included, is kept. */
    CHECK_EQ_STR(logged("caf\xc3\xa9 \xe2\x82\xac \xc2\xa0"),
                 "caf\xc3\xa9 \xe2\x82\xac \xc2\xa0\n");
}

int main(void)
{
    unsetenv("JOURNAL_STREAM");
    return RUN(T(control_characters_from_clients_do_not_reach_the_log_raw));
}
