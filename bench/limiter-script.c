/* limiter-script: prints the Lua script usaged runs for every check (limiter_script: the file
 * src/limits/check.lua, embedded at build time), so that bench/compare can load the very same
 * script into redis-benchmark. */
#include <stdio.h>

#include "limiter.h"

int main(void)
{
    fputs(limiter_script, stdout);
    return 0;
}
