// SPDX-License-Identifier: GPL-2.0
/* klpt_up2: version 2 of the upgrade pair (see klpt_upgrade.h). */
#include "klpt_upgrade.h"
MODULE_DESCRIPTION("klptrace lab: upgrade pair, version 2");
