// Pre-selects the reader's timezone from the browser. The form works without it: the server
// then uses the course's timezone. Served from /static: the CSP forbids inline scripts.
(function () {
  "use strict";
  var select = document.getElementById("timezone");
  if (!select || select.getAttribute("aria-invalid") === "true") return;
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (e) {
    return;
  }
  if (!zone || !/^[A-Za-z_]+(\/[A-Za-z0-9_+-]+)*$/.test(zone)) return;
  for (var i = 0; i < select.options.length; i++) {
    if (select.options[i].value === zone) {
      select.selectedIndex = i;
      return;
    }
  }
  var option = document.createElement("option");
  option.value = zone;
  option.textContent = zone;
  select.insertBefore(option, select.firstChild);
  select.selectedIndex = 0;
})();
