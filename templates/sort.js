// Sort a table by a column when its header is clicked (again: the other way). Cells are compared as numbers when
// both parse as one (a trailing "%" or "± ..." ignored), else as text; empty cells ("-") go last. No data in here.
for (const table of document.querySelectorAll("table.sortable")) {
  const heads = table.tHead.rows[0].cells;
  for (let i = 0; i < heads.length; i++) {
    heads[i].tabIndex = 0;
    heads[i].title = "sort by this column";
    const sort = () => {
      const body = table.tBodies[0];
      const down = heads[i].getAttribute("aria-sort") === "ascending";
      for (const h of heads) h.removeAttribute("aria-sort");
      heads[i].setAttribute("aria-sort", down ? "descending" : "ascending");
      const key = (row) => {
        const t = row.cells[i].textContent.trim();
        const n = parseFloat(t.replace(/,/g, "").split(" ")[0]);
        return t === "-" || t === "" ? null : (isNaN(n) ? t.toLowerCase() : n);
      };
      const rows = Array.from(body.rows).map((r) => [key(r), r]);
      rows.sort((a, b) => {
        if (a[0] === null) return b[0] === null ? 0 : 1;
        if (b[0] === null) return -1;
        const c = typeof a[0] === typeof b[0] ? (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0) : (typeof a[0] === "number" ? -1 : 1);
        return down ? -c : c;
      });
      for (const [, r] of rows) body.appendChild(r);
    };
    heads[i].addEventListener("click", sort);
    heads[i].addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
  }
}
