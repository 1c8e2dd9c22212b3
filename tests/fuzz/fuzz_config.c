/* libFuzzer target: the config parser on arbitrary bytes. It must refuse (with a message) or
 * accept, never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct config *c = config_parse("fuzz.yaml", (const char *)data, size, err, sizeof(err));
    if (!c && err[0] == '\0')
        abort(); /* a refusal always says why */
    config_free(c);
    return 0;
}
