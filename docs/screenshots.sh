#!/usr/bin/env bash
# Screenshots of the demo's pages for the README, in headless Chromium (Debian: apt install chromium).
# Usage: covfast demo --out /tmp/demo && bash docs/screenshots.sh /tmp/demo
set -euo pipefail
demo=$(cd "${1:?the folder covfast demo wrote}" && pwd)
docs=$(cd "$(dirname "$0")" && pwd)
shot() {  # PAGE PNG HEIGHT: the top of PAGE, 1200 px wide
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1200,$3" \
    --screenshot="$docs/$2" "file://$demo/$1" 2>/dev/null
  echo "$docs/$2"
}
shot runs/resnet34/report/index.html demo_report_page.png 2300
shot compare/index.html demo_compare_page.png 2300
cp "$demo/compare/grid.png" "$docs/demo_compare.png"  # the README's first figure: the comparison's grid
echo "$docs/demo_compare.png"
