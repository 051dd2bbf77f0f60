// SPDX-License-Identifier: GPL-2.0
/* klpt_cum3: release 3 of the cumulative livepatch (see klpt_cumulative.h). */
#include "klpt_cumulative.h"
MODULE_DESCRIPTION("klptrace lab: cumulative livepatch, release 3");
