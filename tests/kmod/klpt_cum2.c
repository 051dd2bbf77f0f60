// SPDX-License-Identifier: GPL-2.0
/* klpt_cum2: release 2 of the cumulative livepatch (see klpt_release.h). */
#define KLPT_REPLACE true
#include "klpt_release.h"
MODULE_DESCRIPTION("klptrace lab: cumulative livepatch, release 2");
